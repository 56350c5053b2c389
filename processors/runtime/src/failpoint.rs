//! Fail points at commit boundaries, for crash tests (quickwit's
//! `failpoints` are the model).
//!
//! In debug builds, `TRELLIS_FAILPOINT=<name>[@<n>]` makes the process
//! abort (no destructors, no flush: as abrupt as `kill -9`) the `n`th time
//! (default: first) it passes the named point. Release builds compile the
//! check out entirely.
//!
//! Points:
//! - [`OUTPUTS_DURABLE`]: a batch's outputs are acknowledged by the broker,
//!   its state and positions not yet committed;
//! - [`STATE_COMMITTED`]: state and positions committed, the group offsets
//!   not yet;
//! - [`VAULT_MID_SHRED`]: the privacy vault has destroyed a subject's key
//!   but not yet rotated the tenant's KEK.

/// After outputs are acknowledged, before the state commit.
pub const OUTPUTS_DURABLE: &str = "outputs-durable";
/// After the state commit, before the group offset commit.
pub const STATE_COMMITTED: &str = "state-committed";
/// In the vault, between destroying a subject key and rotating the KEK.
pub const VAULT_MID_SHRED: &str = "vault-mid-shred";

/// The environment variable that arms a fail point.
pub const ENV: &str = "TRELLIS_FAILPOINT";

/// Aborts the process if `name` is armed and this is the armed pass.
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    armed::hit(name);
    #[cfg(not(debug_assertions))]
    let _ = name;
}

#[cfg(debug_assertions)]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Armed {
        name: String,
        at: u64,
        passes: AtomicU64,
    }

    fn armed() -> Option<&'static Armed> {
        static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
        ARMED
            .get_or_init(|| {
                let spec = std::env::var(super::ENV).ok()?;
                let (name, at) = match spec.split_once('@') {
                    Some((name, at)) => (name.to_string(), at.parse().unwrap_or(1)),
                    None => (spec, 1),
                };
                Some(Armed {
                    name,
                    at,
                    passes: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    pub fn hit(name: &str) {
        if let Some(armed) = armed()
            && armed.name == name
            && armed.passes.fetch_add(1, Ordering::SeqCst) + 1 == armed.at
        {
            eprintln!("fail point `{name}` reached: aborting");
            std::process::abort();
        }
    }
}
