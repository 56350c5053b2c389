//! Who signs anchors and checkpoints, and who can check them.
//!
//! The default is Ed25519 in the formats of C2SP
//! [signed-note](https://c2sp.org/signed-note): a key has a *name*, a
//! 32-bit *key id* (`SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)[:4]`) and a
//! public *verifier key* `name+hexid+base64(0x01 ‖ public key)` that is all
//! a verifier ever needs. Witnesses cosign with C2SP
//! [tlog-cosignature](https://c2sp.org/tlog-cosignature) v1 keys (type
//! 0x04, timestamped signatures). Note parsing and the standard Ed25519
//! signer/verifier are the `signed_note` crate's; this module adds the
//! cosignature type, which that crate does not have, through its traits.
//!
//! HMAC-SHA256 anchors remain for deployments that started with them: the
//! verifier then needs the secret, and there are no public checkpoints.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use trellis_records::Anchor;
use trellis_runtime::secret::Secret;

use crate::canonical::anchor_body;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Signature type of a signed-note Ed25519 key.
const ALG_ED25519: u8 = 0x01;
/// Signature type of a tlog-cosignature v1 (Ed25519) key.
const ALG_COSIGNATURE_V1: u8 = 0x04;

/// A key that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl From<String> for KeyError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

fn key_id(name: &str, alg: u8, public: &VerifyingKey) -> u32 {
    signed_note::key_id(name, &[&[alg][..], public.as_bytes()].concat())
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if signed_note::is_key_name_valid(name) {
        Ok(())
    } else {
        Err(KeyError(format!(
            "{name:?} is not a valid key name (non-empty, no spaces or '+')"
        )))
    }
}

fn seed(secret: &Secret) -> Result<SigningKey, KeyError> {
    let seed: [u8; 32] = secret
        .expose()
        .try_into()
        .map_err(|_| KeyError("an Ed25519 key is 32 bytes".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A verifier key string: `name+hexid+base64(alg ‖ key)`.
fn vkey(name: &str, id: u32, alg: u8, public: &VerifyingKey) -> String {
    let material = [&[alg][..], public.as_bytes()].concat();
    format!("{name}+{id:08x}+{}", BASE64.encode(material))
}

/// Parses a verifier key of type `alg`, checking its id.
fn parse_vkey(text: &str, alg: u8) -> Result<(String, u32, VerifyingKey), KeyError> {
    let bad = |why: &str| KeyError(format!("verifier key {:?}: {why}", text.trim()));
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected name+keyid+base64"));
    };
    check_name(name)?;
    let id = u32::from_str_radix(id, 16).map_err(|_| bad("the key id is not hex"))?;
    let material = BASE64
        .decode(material)
        .map_err(|_| bad("the key is not base64"))?;
    match material.split_first() {
        Some((&a, key)) if a == alg && key.len() == 32 => {
            let public = VerifyingKey::from_bytes(key.try_into().expect("32 bytes"))
                .map_err(|_| bad("not an Ed25519 public key"))?;
            if key_id(name, alg, &public) != id {
                return Err(bad("the key id does not match the name and key"));
            }
            Ok((name.to_string(), id, public))
        }
        Some((&a, _)) if a != alg => Err(bad(&format!(
            "signature type 0x{a:02x}, expected 0x{alg:02x}"
        ))),
        _ => Err(bad("wrong key length")),
    }
}

/// An Ed25519 signed-note key: signs anchors and checkpoints.
#[derive(Clone)]
pub struct NoteKey {
    name: String,
    id: u32,
    key: SigningKey,
}

impl fmt::Debug for NoteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteKey({}+{:08x}, secret redacted)", self.name, self.id)
    }
}

impl NoteKey {
    /// The key `name` with the 32-byte seed in `secret`.
    ///
    /// # Errors
    /// An invalid name or a seed of the wrong length.
    pub fn new(name: &str, secret: &Secret) -> Result<Self, KeyError> {
        check_name(name)?;
        let key = seed(secret)?;
        let id = key_id(name, ALG_ED25519, &key.verifying_key());
        Ok(Self {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// `name+hexid`: how anchors name the key that signed them.
    pub fn key_ref(&self) -> String {
        format!("{}+{:08x}", self.name, self.id)
    }

    /// The public verifier key (give it to verifiers and witnesses).
    pub fn vkey(&self) -> String {
        vkey(&self.name, self.id, ALG_ED25519, &self.key.verifying_key())
    }

    /// Signs a note text (a checkpoint body), returning the whole note.
    pub fn sign_note(&self, text: &[u8]) -> Result<String, KeyError> {
        let mut note =
            signed_note::Note::new(text, &[]).map_err(|e| KeyError(format!("note: {e}")))?;
        note.add_sigs(&[self])
            .map_err(|e| KeyError(format!("signing a note: {e}")))?;
        String::from_utf8(note.to_bytes()).map_err(|e| KeyError(e.to_string()))
    }
}

impl signed_note::Signer for NoteKey {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        Ok(self.key.sign(msg).to_vec())
    }
}

/// Signs anchors.
#[derive(Debug)]
pub enum Signer {
    /// Ed25519 (the default): anchors name the key as `name+hexid`.
    Ed25519(Box<NoteKey>),
    /// HMAC-SHA256 under a named secret (deployments that began with it).
    Hmac {
        /// Written into every anchor.
        key_id: String,
        /// The secret (redacted in `Debug`).
        key: Secret,
    },
}

impl Signer {
    /// An HMAC-SHA256 signer.
    pub fn hmac(key_id: impl Into<String>, key: Secret) -> Self {
        Self::Hmac {
            key_id: key_id.into(),
            key,
        }
    }

    /// An Ed25519 signer named `name` with the seed in `secret`.
    ///
    /// # Errors
    /// See [`NoteKey::new`].
    pub fn ed25519(name: &str, secret: &Secret) -> Result<Self, KeyError> {
        NoteKey::new(name, secret).map(|key| Self::Ed25519(Box::new(key)))
    }

    /// The key id anchors carry.
    pub fn key_id(&self) -> String {
        match self {
            Self::Ed25519(key) => key.key_ref(),
            Self::Hmac { key_id, .. } => key_id.clone(),
        }
    }

    /// The Ed25519 key, if that is what signs.
    pub fn note_key(&self) -> Option<&NoteKey> {
        match self {
            Self::Ed25519(key) => Some(key),
            Self::Hmac { .. } => None,
        }
    }

    /// Sets the anchor's `key_id` and `signature` (hex).
    pub fn sign(&self, anchor: &mut Anchor) {
        anchor.key_id = self.key_id();
        anchor.signature = match self {
            Self::Ed25519(key) => hex::encode(key.key.sign(&anchor_body(anchor)).to_bytes()),
            Self::Hmac { key, .. } => hex::encode(mac(key, anchor).finalize().into_bytes()),
        };
    }

    /// What checks this signer's anchors (tests, tools that hold the key).
    pub fn keys(&self) -> Keys {
        let mut keys = Keys::default();
        match self {
            Self::Ed25519(key) => keys.ed25519.push((key.key_ref(), key.key.verifying_key())),
            Self::Hmac { key_id, key } => keys.hmac.push((key_id.clone(), key.clone())),
        }
        keys
    }
}

fn mac(key: &Secret, anchor: &Anchor) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.expose())
        .expect("HMAC takes keys of any length");
    mac.update(&anchor_body(anchor));
    mac
}

/// The keys a verifier trusts: Ed25519 public keys (every key the log was
/// ever signed with, for a chain that rotated) and, for HMAC deployments,
/// shared secrets.
#[derive(Clone, Default)]
pub struct Keys {
    ed25519: Vec<(String, VerifyingKey)>,
    hmac: Vec<(String, Secret)>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.ed25519.iter().map(|(n, _)| n.as_str()).collect();
        let hmac: Vec<&str> = self.hmac.iter().map(|(n, _)| n.as_str()).collect();
        write!(
            f,
            "Keys {{ ed25519: {names:?}, hmac: {hmac:?} (secrets redacted) }}"
        )
    }
}

impl Keys {
    /// Trusts the Ed25519 verifier key `vkey`.
    ///
    /// # Errors
    /// A malformed key.
    pub fn trust_vkey(&mut self, vkey: &str) -> Result<(), KeyError> {
        let (name, id, public) = parse_vkey(vkey, ALG_ED25519)?;
        let key_ref = format!("{name}+{id:08x}");
        // The same key given twice would make every note ambiguous.
        if !self
            .ed25519
            .iter()
            .any(|(r, p)| *r == key_ref && *p == public)
        {
            self.ed25519.push((key_ref, public));
        }
        Ok(())
    }

    /// Whether anchors naming `key_id` are Ed25519-signed by a trusted key
    /// (and so must carry a checkpoint).
    pub fn is_ed25519(&self, key_id: &str) -> bool {
        self.ed25519.iter().any(|(r, _)| r == key_id)
    }

    /// Trusts an HMAC secret named `key_id`.
    pub fn trust_hmac(&mut self, key_id: &str, key: Secret) {
        self.hmac.push((key_id.to_string(), key));
    }

    /// No key at all.
    pub fn is_empty(&self) -> bool {
        self.ed25519.is_empty() && self.hmac.is_empty()
    }

    /// Whether `anchor` carries a valid signature by a trusted key (HMAC in
    /// constant time).
    pub fn verify(&self, anchor: &Anchor) -> bool {
        let Ok(signature) = hex::decode(&anchor.signature) else {
            return false;
        };
        if let Some((_, public)) = self.ed25519.iter().find(|(r, _)| *r == anchor.key_id) {
            return Signature::from_slice(&signature)
                .is_ok_and(|s| public.verify(&anchor_body(anchor), &s).is_ok());
        }
        self.hmac
            .iter()
            .find(|(id, _)| *id == anchor.key_id)
            .is_some_and(|(_, key)| mac(key, anchor).verify_slice(&signature).is_ok())
    }

    /// Opens a signed note that must carry a signature by one of the
    /// trusted Ed25519 keys; returns its text (the body).
    ///
    /// # Errors
    /// Malformed, or no valid signature by a trusted key.
    pub fn open_note(&self, note: &[u8]) -> Result<Vec<u8>, KeyError> {
        let verifiers: Vec<Box<dyn signed_note::Verifier>> = self
            .ed25519
            .iter()
            .map(|(key_ref, public)| {
                let (name, id) = key_ref.rsplit_once('+').expect("name+id");
                Box::new(Ed25519Verifier {
                    name: name.to_string(),
                    id: u32::from_str_radix(id, 16).expect("hex id"),
                    public: *public,
                }) as Box<dyn signed_note::Verifier>
            })
            .collect();
        open(note, verifiers)
    }
}

fn open(note: &[u8], verifiers: Vec<Box<dyn signed_note::Verifier>>) -> Result<Vec<u8>, KeyError> {
    let parsed = signed_note::Note::from_bytes(note)
        .map_err(|e| KeyError(format!("not a signed note: {e}")))?;
    let (verified, _) = parsed
        .verify(&signed_note::VerifierList::new(verifiers))
        .map_err(|e| KeyError(format!("note signature: {e}")))?;
    if verified.is_empty() {
        return Err(KeyError("no signature by a trusted key".into()));
    }
    Ok(parsed.text().to_vec())
}

struct Ed25519Verifier {
    name: String,
    id: u32,
    public: VerifyingKey,
}

impl signed_note::Verifier for Ed25519Verifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        Signature::from_slice(sig).is_ok_and(|s| self.public.verify(msg, &s).is_ok())
    }
}

/// The signature lines of `note` (`parsed` from it): the crate keeps them
/// private, and a cosigner must carry the others over.
fn signatures<'a>(
    note: &'a [u8],
    parsed: &signed_note::Note,
) -> impl Iterator<Item = signed_note::Signature> + 'a {
    // The text ends with the newline before the blank line.
    note[parsed.text().len() + 1..]
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| signed_note::Signature::from_bytes(line).ok())
}

/// The message a tlog-cosignature v1 signs: a header line, the time line,
/// then the note body.
fn cosigned_message(time: u64, body: &[u8]) -> Vec<u8> {
    let mut msg = format!("cosignature/v1\ntime {time}\n").into_bytes();
    msg.extend_from_slice(body);
    msg
}

/// A witness's key: cosigns checkpoints (tlog-cosignature v1).
pub struct Cosigner {
    name: String,
    id: u32,
    key: SigningKey,
    /// Seconds since the epoch for the next cosignature.
    now: fn() -> u64,
}

impl fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Cosigner({}+{:08x}, secret redacted)",
            self.name, self.id
        )
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Cosigner {
    /// The cosigner `name` with the 32-byte seed in `secret`.
    ///
    /// # Errors
    /// An invalid name or a seed of the wrong length.
    pub fn new(name: &str, secret: &Secret) -> Result<Self, KeyError> {
        check_name(name)?;
        let key = seed(secret)?;
        Ok(Self {
            id: key_id(name, ALG_COSIGNATURE_V1, &key.verifying_key()),
            name: name.to_string(),
            key,
            now: unix_now,
        })
    }

    /// The public verifier key (type 0x04).
    pub fn vkey(&self) -> String {
        vkey(
            &self.name,
            self.id,
            ALG_COSIGNATURE_V1,
            &self.key.verifying_key(),
        )
    }

    /// Adds this witness's cosignature to a signed note (other signatures
    /// kept, a previous one of this key replaced).
    ///
    /// # Errors
    /// A malformed note.
    pub fn cosign(&self, note: &[u8]) -> Result<String, KeyError> {
        let parsed = signed_note::Note::from_bytes(note)
            .map_err(|e| KeyError(format!("not a signed note: {e}")))?;
        let text = parsed.text().to_vec();
        // Keep the log's signature lines; drop an older cosignature of ours.
        let others: Vec<signed_note::Signature> = signatures(note, &parsed)
            .filter(|s| !(s.name() == self.name && s.id() == self.id))
            .collect();
        let mut note =
            signed_note::Note::new(&text, &others).map_err(|e| KeyError(format!("note: {e}")))?;
        note.add_sigs(&[self])
            .map_err(|e| KeyError(format!("cosigning: {e}")))?;
        String::from_utf8(note.to_bytes()).map_err(|e| KeyError(e.to_string()))
    }
}

impl signed_note::Signer for Cosigner {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        let time = (self.now)();
        let mut out = time.to_be_bytes().to_vec();
        out.extend_from_slice(&self.key.sign(&cosigned_message(time, msg)).to_bytes());
        Ok(out)
    }
}

/// Checks a witness's cosignatures.
#[derive(Debug, Clone)]
pub struct CosignatureVerifier {
    name: String,
    id: u32,
    public: VerifyingKey,
}

impl CosignatureVerifier {
    /// From a witness's verifier key (type 0x04).
    ///
    /// # Errors
    /// A malformed key.
    pub fn new(vkey: &str) -> Result<Self, KeyError> {
        let (name, id, public) = parse_vkey(vkey, ALG_COSIGNATURE_V1)?;
        Ok(Self { name, id, public })
    }

    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a note that must carry this witness's valid cosignature and a
    /// valid signature by one of `log_keys`; returns the body and the
    /// cosignature's time (seconds since the epoch).
    ///
    /// # Errors
    /// Malformed, or either signature missing or invalid.
    pub fn open(&self, note: &[u8], log_keys: &Keys) -> Result<(Vec<u8>, u64), KeyError> {
        let body = log_keys
            .open_note(note)
            .map_err(|e| KeyError(format!("the log's signature: {e}")))?;
        let witness: Vec<Box<dyn signed_note::Verifier>> = vec![Box::new(self.clone())];
        open(note, witness).map_err(|e| KeyError(format!("the witness's cosignature: {e}")))?;
        let parsed = signed_note::Note::from_bytes(note).map_err(|e| KeyError(e.to_string()))?;
        let time = signatures(note, &parsed)
            .find(|s| s.name() == self.name && s.id() == self.id)
            .and_then(|s| {
                s.signature()
                    .get(..8)
                    .map(|t| u64::from_be_bytes(t.try_into().expect("8")))
            })
            .unwrap_or_default();
        Ok((body, time))
    }
}

impl signed_note::Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let (Some(time), Some(signature)) = (sig.get(..8), sig.get(8..)) else {
            return false;
        };
        let time = u64::from_be_bytes(time.try_into().expect("8 bytes"));
        time <= i64::MAX as u64
            && Signature::from_slice(signature)
                .is_ok_and(|s| self.public.verify(&cosigned_message(time, msg), &s).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example key and note of golang.org/x/mod/sumdb/note, which
    /// c2sp.org/signed-note reproduces.
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const SKEY_SEED_B64: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn peter() -> NoteKey {
        let material = BASE64.decode(SKEY_SEED_B64).unwrap();
        NoteKey::new("PeterNeumann", &Secret::from_bytes(material[1..].to_vec())).unwrap()
    }

    #[test]
    fn reproduces_the_reference_key_and_signature() {
        let key = peter();
        assert_eq!(key.vkey(), VKEY);
        assert_eq!(
            key.sign_note(TEXT.as_bytes()).unwrap(),
            format!("{TEXT}\n{SIG}")
        );
        let mut keys = Keys::default();
        keys.trust_vkey(VKEY).unwrap();
        assert_eq!(
            keys.open_note(format!("{TEXT}\n{SIG}").as_bytes()).unwrap(),
            TEXT.as_bytes()
        );
        // One changed byte of the text: no valid signature.
        let forged = format!("{}\n{SIG}", TEXT.replace("answer", "Answer"));
        assert!(keys.open_note(forged.as_bytes()).is_err());
    }

    #[test]
    fn a_vkey_with_a_wrong_id_or_type_is_refused() {
        let mut keys = Keys::default();
        let wrong_id = VKEY.replace("c74f20a3", "c74f20a4");
        assert!(
            keys.trust_vkey(&wrong_id)
                .unwrap_err()
                .to_string()
                .contains("key id")
        );
        let witness = Cosigner::new("w.example/1", &Secret::from_bytes(vec![3; 32])).unwrap();
        assert!(
            keys.trust_vkey(&witness.vkey())
                .unwrap_err()
                .to_string()
                .contains("type 0x04")
        );
        assert!(CosignatureVerifier::new(VKEY).is_err());
    }

    #[test]
    fn cosignatures_verify_and_bind_the_time_and_body() {
        let log = peter();
        let note = log
            .sign_note(b"example.com/log\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
            .unwrap();
        let mut witness = Cosigner::new("w.example/1", &Secret::from_bytes(vec![3; 32])).unwrap();
        witness.now = || 1_700_000_000;
        let cosigned = witness.cosign(note.as_bytes()).unwrap();
        let verifier = CosignatureVerifier::new(&witness.vkey()).unwrap();
        let mut keys = Keys::default();
        keys.trust_vkey(VKEY).unwrap();
        let (body, time) = verifier.open(cosigned.as_bytes(), &keys).unwrap();
        assert_eq!(time, 1_700_000_000);
        assert!(body.starts_with(b"example.com/log\n3\n"));
        // Cosigning again replaces the witness's line, keeps the log's.
        let again = witness.cosign(cosigned.as_bytes()).unwrap();
        assert_eq!(again.matches("— ").count(), 2);
        // The log's note alone has no cosignature.
        assert!(verifier.open(note.as_bytes(), &keys).is_err());
        // A changed time field breaks the signature.
        let line = cosigned.lines().last().unwrap();
        let (prefix, b64) = line.rsplit_once(' ').unwrap();
        let mut raw = BASE64.decode(b64).unwrap();
        raw[11] ^= 1; // last byte of the timestamp
        let tampered = cosigned.replace(line, &format!("{prefix} {}", BASE64.encode(raw)));
        assert!(verifier.open(tampered.as_bytes(), &keys).is_err());
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        // Exact text: a derived `Debug` on a key type would print its bytes
        // as decimals (`[171, 171, …]`), which a search for hex never sees.
        let secret = Secret::from_bytes(vec![0xAB; 32]);
        let ed = Signer::ed25519("k", &secret).unwrap();
        assert_eq!(
            format!("{ed:?}"),
            format!("Ed25519(NoteKey({}, secret redacted))", ed.key_id())
        );
        let hmac = Signer::hmac("h", secret.clone());
        assert_eq!(
            format!("{hmac:?}"),
            r#"Hmac { key_id: "h", key: Secret(<redacted>) }"#
        );
        assert_eq!(
            format!("{:?}", hmac.keys()),
            r#"Keys { ed25519: [], hmac: ["h"] (secrets redacted) }"#
        );
        let cosigner = Cosigner::new("w", &secret).unwrap();
        let id = cosigner.vkey().split('+').nth(1).unwrap().to_string();
        assert_eq!(
            format!("{cosigner:?}"),
            format!("Cosigner(w+{id}, secret redacted)")
        );
    }
}
