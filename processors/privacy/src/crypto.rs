//! The cryptography of one subject, and of IP addresses.
//!
//! Every subject (a person as one tenant knows them) has 32 bytes of random
//! secret material, held only in the [`crate::vault`]. Everything else is
//! derived from it with HKDF-SHA256 (salt: the tenant id), so destroying the
//! material destroys all of it at once:
//!
//! - the **data key** (AES-256-GCM) that seals the subject's fields;
//! - the **nonce key**: nonces are `HMAC(nonce key, AAD ‖ plaintext)[..12]`,
//!   so sealing the same field of the same event again (a replay) gives the
//!   same bytes (promise 3), while two different plaintexts under one key get
//!   different nonces (a collision needs a 96-bit HMAC collision). This is the
//!   synthetic-IV construction of RFC 5297 with GCM as the cipher;
//! - the **pseudonym**: random per subject, so unrelated across tenants and
//!   not recomputable from the user id once the material is gone;
//! - the **key id** that travels with each ciphertext.
//!
//! The AAD binds tenant, field, event id and key id, so a ciphertext moved to
//! another record, field or tenant fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use trellis_records::Sealed;
use zeroize::Zeroize;

type HmacSha256 = Hmac<Sha256>;

/// Length of subject secret material and of every key.
pub const KEY_LEN: usize = 32;

/// A subject's keys, derived from its secret material. Never printed.
///
/// The keys are held prepared (AES round keys and GHASH key, HMAC pads):
/// setting them up cost more than sealing a field. Both wipe themselves on
/// drop (the `zeroize` features of `aes`, `polyval`, `hmac` and `sha2`).
#[derive(Clone)]
pub struct SubjectKeys {
    data: Aes256Gcm,
    nonce: HmacSha256,
    pseudonym: String,
    key_id: String,
}

impl std::fmt::Debug for SubjectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKeys")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A sealed field that would not open: wrong key, moved, or tampered with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("field does not open under this key (wrong key, moved or altered)")]
pub struct OpenError;

fn hkdf_expand(material: &[u8; KEY_LEN], tenant: &str, info: &[u8]) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    Hkdf::<Sha256>::new(Some(tenant.as_bytes()), material)
        .expand(info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

impl SubjectKeys {
    /// Derives a tenant's subject keys from the subject's secret material.
    pub fn derive(tenant: &str, material: &[u8; KEY_LEN]) -> Self {
        let pseudonym = hkdf_expand(material, tenant, b"trellis/v1/pseudonym");
        let key_id = hkdf_expand(material, tenant, b"trellis/v1/key-id");
        let mut data_key = hkdf_expand(material, tenant, b"trellis/v1/data-key");
        let mut nonce_key = hkdf_expand(material, tenant, b"trellis/v1/nonce-key");
        let data = Aes256Gcm::new_from_slice(&data_key).expect("32-byte key");
        let nonce = <HmacSha256 as hmac::KeyInit>::new_from_slice(&nonce_key)
            .expect("HMAC takes keys of any length");
        data_key.zeroize();
        nonce_key.zeroize();
        Self {
            data,
            nonce,
            pseudonym: format!("p_{}", hex::encode(&pseudonym[..16])),
            key_id: format!("k_{}", hex::encode(&key_id[..12])),
        }
    }

    /// The subject's pseudonym in this tenant.
    pub fn pseudonym(&self) -> &str {
        &self.pseudonym
    }

    /// The id of the subject's data key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn aad(&self, tenant: &str, field: &str, event_id: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(tenant.len() + field.len() + event_id.len() + 32);
        for part in [tenant, field, event_id, &self.key_id] {
            aad.extend_from_slice(part.as_bytes());
            aad.push(0);
        }
        aad
    }

    /// Seals one field of one event.
    pub fn seal(&self, tenant: &str, field: &str, event_id: &str, plaintext: &[u8]) -> Sealed {
        let aad = self.aad(tenant, field, event_id);
        let mut mac = self.nonce.clone();
        mac.update(&aad);
        mac.update(plaintext);
        let nonce = mac.finalize().into_bytes();
        let nonce = &nonce[..12];
        let ciphertext = self
            .data
            .encrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        Sealed {
            key_id: self.key_id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Opens a field sealed by [`SubjectKeys::seal`] for the same tenant,
    /// field and event.
    ///
    /// # Errors
    /// [`OpenError`] if anything differs.
    pub fn open(
        &self,
        tenant: &str,
        field: &str,
        event_id: &str,
        sealed: &Sealed,
    ) -> Result<Vec<u8>, OpenError> {
        if sealed.key_id != self.key_id || sealed.nonce.len() != 12 {
            return Err(OpenError);
        }
        let aad = self.aad(tenant, field, event_id);
        self.data
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError)
    }
}

/// Hashes client IP addresses with a rotatable secret salt.
pub struct IpHasher {
    salt: [u8; KEY_LEN],
    salt_id: String,
}

impl std::fmt::Debug for IpHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpHasher")
            .field("salt_id", &self.salt_id)
            .finish_non_exhaustive()
    }
}

impl Drop for IpHasher {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl IpHasher {
    /// A hasher for `salt`. The salt id (first 8 hex digits of a hash of the
    /// salt) travels with every hash, so a rotated salt is visible downstream.
    pub fn new(salt: [u8; KEY_LEN]) -> Self {
        let id = Sha256::new()
            .chain_update(b"trellis/v1/ip-salt-id")
            .chain_update(salt)
            .finalize();
        Self {
            salt,
            salt_id: hex::encode(&id[..4]),
        }
    }

    /// The current salt's id.
    pub fn salt_id(&self) -> &str {
        &self.salt_id
    }

    /// Hex SHA-256(ip ‖ tenant salt), where the tenant salt is
    /// HMAC(salt, tenant): the same address in two tenants hashes apart, so
    /// IP hashes cannot join tenants' data.
    pub fn hash(&self, tenant: &str, ip: &str) -> String {
        let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(&self.salt)
            .expect("HMAC takes keys of any length");
        mac.update(tenant.as_bytes());
        let tenant_salt = mac.finalize().into_bytes();
        hex::encode(
            Sha256::new()
                .chain_update(ip.trim().as_bytes())
                .chain_update(tenant_salt)
                .finalize(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: [u8; 32] = [1; 32];
    const M2: [u8; 32] = [2; 32];

    #[test]
    fn sealing_is_deterministic_and_opens_only_in_place() {
        let keys = SubjectKeys::derive("acme", &M1);
        let a = keys.seal("acme", "actor.email", "e1", b"ann@example.org");
        assert_eq!(
            a,
            keys.seal("acme", "actor.email", "e1", b"ann@example.org")
        );
        assert_eq!(
            keys.open("acme", "actor.email", "e1", &a).unwrap(),
            b"ann@example.org"
        );
        // Moved to another event, field or tenant: refuses.
        assert_eq!(keys.open("acme", "actor.email", "e2", &a), Err(OpenError));
        assert_eq!(keys.open("acme", "actor.name", "e1", &a), Err(OpenError));
        let other_tenant = SubjectKeys::derive("globex", &M1);
        assert_eq!(
            other_tenant.open("globex", "actor.email", "e1", &a),
            Err(OpenError)
        );
        // Altered: refuses.
        let mut altered = a.clone();
        altered.ciphertext[0] ^= 1;
        assert_eq!(
            keys.open("acme", "actor.email", "e1", &altered),
            Err(OpenError)
        );
    }

    #[test]
    fn different_plaintexts_never_share_a_nonce() {
        let keys = SubjectKeys::derive("acme", &M1);
        let a = keys.seal("acme", "result.response", "e1", b"yes");
        let b = keys.seal("acme", "result.response", "e1", b"no");
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn pseudonyms_and_key_ids_differ_by_subject_and_tenant() {
        let a = SubjectKeys::derive("acme", &M1);
        let b = SubjectKeys::derive("acme", &M2);
        let c = SubjectKeys::derive("globex", &M1);
        assert_ne!(a.pseudonym(), b.pseudonym());
        assert_ne!(a.pseudonym(), c.pseudonym());
        assert_ne!(a.key_id(), b.key_id());
        assert_ne!(a.key_id(), c.key_id(), "same material, another tenant");
        assert_eq!(a.pseudonym(), SubjectKeys::derive("acme", &M1).pseudonym());
        assert_eq!(a.key_id(), SubjectKeys::derive("acme", &M1).key_id());
        // The exact text: a derived `Debug` would add the key fields (the
        // data key as a decimal list, the pseudonym), and any added field
        // changes it.
        assert_eq!(
            format!("{a:?}"),
            format!("SubjectKeys {{ key_id: {:?}, .. }}", a.key_id())
        );
    }

    #[test]
    fn prepared_keys_wipe_themselves_on_drop() {
        fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        // Fails to compile if a `zeroize` feature is dropped from Cargo.toml.
        wipes_on_drop::<aes::Aes256>();
        // `Hmac` holds its pads as two hash states of this type.
        wipes_on_drop::<<Sha256 as hmac::EagerHash>::Core>();
    }

    #[test]
    fn ip_hashes_are_per_tenant_and_carry_the_salt_id() {
        let h = IpHasher::new([7; 32]);
        assert_eq!(h.hash("acme", "203.0.113.9"), h.hash("acme", "203.0.113.9"));
        assert_ne!(
            h.hash("acme", "203.0.113.9"),
            h.hash("globex", "203.0.113.9")
        );
        let rotated = IpHasher::new([8; 32]);
        assert_ne!(h.salt_id(), rotated.salt_id());
        assert_ne!(
            h.hash("acme", "203.0.113.9"),
            rotated.hash("acme", "203.0.113.9")
        );
        assert!(!h.hash("acme", "203.0.113.9").contains("203.0.113.9"));
    }
}
