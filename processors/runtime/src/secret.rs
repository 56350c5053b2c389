//! Secrets: read from the environment at start-up, validated, never printed.
//!
//! A secret comes from `VAR` or from the file named by `VAR_FILE` (for
//! container secret mounts). Every secret a processor needs is declared as a
//! [`SecretSpec`]; [`load_secrets`] checks them all and reports every missing
//! or malformed one at once, naming the variable and what it is for, and never
//! the value. [`Secret`] has no `Display` and a redacted `Debug`, and its
//! bytes are zeroed on drop.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// Secret key material. Its bytes are reachable only through [`Secret::expose`].
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes that are already validated (tests, derived keys).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw key bytes. Call sites are the only places a secret is used.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a secret is written in its variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    /// 32 bytes written as 64 hex characters (HMAC and AES-256 keys, salts).
    Hex32,
    /// A Postgres connection URL with its password
    /// (`postgresql://user:password@host:port/dbname`).
    PostgresUrl,
}

impl SecretFormat {
    fn describe(self) -> &'static str {
        match self {
            SecretFormat::Hex32 => "64 hex characters (32 bytes)",
            SecretFormat::PostgresUrl => "a postgresql://user:password@host:port/dbname URL",
        }
    }

    fn parse(self, text: &str) -> Result<Vec<u8>, String> {
        match self {
            SecretFormat::Hex32 => {
                let text = text.trim();
                if text.len() != 64 {
                    return Err(format!("has {} characters", text.len()));
                }
                hex::decode(text).map_err(|_| "is not hexadecimal".to_string())
            }
            SecretFormat::PostgresUrl => {
                let text = text.trim();
                let scheme = ["postgresql://", "postgres://"]
                    .iter()
                    .any(|s| text.starts_with(s));
                if !scheme || text.contains(char::is_whitespace) {
                    return Err("is not a postgresql:// URL".into());
                }
                Ok(text.as_bytes().to_vec())
            }
        }
    }
}

/// A secret a processor refuses to start without.
#[derive(Debug, Clone, Copy)]
pub struct SecretSpec {
    /// Environment variable holding the value (`<env>_FILE` may name a file instead).
    pub env: &'static str,
    /// How the value is written.
    pub format: SecretFormat,
    /// What the secret protects, for the start-up error message.
    pub purpose: &'static str,
}

/// The secrets a processor loaded, by variable name.
#[derive(Debug, Default)]
pub struct Secrets(BTreeMap<&'static str, Secret>);

impl Secrets {
    /// The secret declared under `env`.
    ///
    /// # Panics
    /// If `env` was not among the specs given to [`load_secrets`]: that is a
    /// programming error, not an input error.
    pub fn get(&self, env: &str) -> &Secret {
        match self.0.get(env) {
            Some(secret) => secret,
            None => panic!("secret {env} was not declared in the processor's SecretSpecs"),
        }
    }
}

/// Every secret that was missing or malformed. Its message names variables only.
#[derive(Debug, thiserror::Error)]
#[error("refusing to start: {}", .problems.join("; "))]
pub struct SecretError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Reads every declared secret through `lookup` (the process environment in
/// production, a map in tests).
///
/// # Errors
/// [`SecretError`] listing every secret that is missing, unreadable or malformed.
pub fn load_secrets_with(
    specs: &[SecretSpec],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Secrets, SecretError> {
    let mut secrets = BTreeMap::new();
    let mut problems = Vec::new();
    for spec in specs {
        let file_var = format!("{}_FILE", spec.env);
        let raw = match (lookup(spec.env), lookup(&file_var)) {
            (Some(value), _) if !value.trim().is_empty() => Zeroizing::new(value),
            (_, Some(path)) if !path.trim().is_empty() => match std::fs::read_to_string(&path) {
                Ok(value) => Zeroizing::new(value),
                Err(e) => {
                    problems.push(format!(
                        "secret {} ({}) could not be read from {file_var}: {}",
                        spec.env,
                        spec.purpose,
                        e.kind()
                    ));
                    continue;
                }
            },
            _ => {
                problems.push(format!(
                    "missing secret {} ({}): set {} or {file_var}",
                    spec.env, spec.purpose, spec.env
                ));
                continue;
            }
        };
        match spec.format.parse(&raw) {
            Ok(bytes) => {
                secrets.insert(spec.env, Secret::from_bytes(bytes));
            }
            Err(why) => problems.push(format!(
                "malformed secret {} ({}): must be {}, but {why}",
                spec.env,
                spec.purpose,
                spec.format.describe()
            )),
        }
    }
    if problems.is_empty() {
        Ok(Secrets(secrets))
    } else {
        Err(SecretError { problems })
    }
}

/// Reads every declared secret from the process environment.
///
/// # Errors
/// As [`load_secrets_with`].
pub fn load_secrets(specs: &[SecretSpec]) -> Result<Secrets, SecretError> {
    load_secrets_with(specs, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEPPER: SecretSpec = SecretSpec {
        env: "T_PEPPER",
        format: SecretFormat::Hex32,
        purpose: "hashing API keys",
    };
    const SALT: SecretSpec = SecretSpec {
        env: "T_SALT",
        format: SecretFormat::Hex32,
        purpose: "IP hashing",
    };

    #[test]
    fn reports_every_missing_and_malformed_secret_without_values() {
        let err = load_secrets_with(&[PEPPER, SALT], |name| {
            (name == "T_SALT").then(|| "zz-not-hex-but-secretish".to_string())
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("missing secret T_PEPPER (hashing API keys)"),
            "{text}"
        );
        assert!(
            text.contains("malformed secret T_SALT (IP hashing)"),
            "{text}"
        );
        assert!(!text.contains("secretish"), "value leaked: {text}");
    }

    #[test]
    fn loads_from_file_and_redacts_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pepper");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        let path = path.to_string_lossy().into_owned();
        let secrets = load_secrets_with(&[PEPPER], |name| {
            (name == "T_PEPPER_FILE").then(|| path.clone())
        })
        .unwrap();
        assert_eq!(secrets.get("T_PEPPER").expose(), &[0xab; 32]);
        assert_eq!(
            format!("{secrets:?}"),
            r#"Secrets({"T_PEPPER": Secret(<redacted>)})"#
        );
    }
}
