//! Table rows from topic records, checked against what the tables accept.
//!
//! Every check Postgres would make on a row is made here first, so a bad
//! record becomes a dead letter with a reason instead of failing the batch
//! transaction: text without NUL characters (Postgres text cannot hold
//! them), timestamps within `timestamptz`'s range, a non-empty tenant that
//! agrees with the record's key and `tenant` header.

use std::time::{Duration, SystemTime};

use trellis_records::{Aggregate, Completion, LearnerProgress};

pub use trellis_runtime::sink::Source;

/// A `trellis.progress` row.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressRow {
    /// The record.
    pub value: LearnerProgress,
    /// `first_activity_at`, converted.
    pub first_activity_at: SystemTime,
    /// `last_activity_at`, converted.
    pub last_activity_at: SystemTime,
    /// `evidence` as the `jsonb` column holds it.
    pub evidence: serde_json::Value,
    /// Lineage.
    pub source: Source,
}

/// A `trellis.completions` row.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRow {
    /// The record.
    pub value: Completion,
    /// `at`, converted.
    pub completed_at: SystemTime,
    /// Lineage.
    pub source: Source,
}

/// A `trellis.aggregates` row.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateRow {
    /// The record.
    pub value: Aggregate,
    /// `window_start`, converted.
    pub window_start: SystemTime,
    /// Lineage.
    pub source: Source,
}

/// Why a record cannot become a row: its dead letter's reason and detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// A field Postgres would refuse.
    #[error("field `{field}`: {problem}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong with it (never its value).
        problem: &'static str,
    },
    /// Key, header and value name different tenants (or none).
    #[error("{0}")]
    Tenant(String),
    /// The key is not what the topic's records are keyed by.
    #[error("{0}")]
    Key(String),
}

impl RowError {
    /// The dead letter's reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            RowError::Field { .. } => "WAREHOUSE_INVALID_ROW",
            RowError::Tenant(_) => "TENANT_MISMATCH",
            RowError::Key(_) => "WAREHOUSE_INVALID_KEY",
        }
    }
}

/// Postgres `timestamptz` ends at 294276 AD (in ms since the epoch); Avro
/// millis go further.
const MAX_MILLIS: i64 = 9_224_318_015_999_999;
/// …and begins at 4713 BC.
const MIN_MILLIS: i64 = -210_866_803_200_000;

fn timestamp(field: &'static str, millis: i64) -> Result<SystemTime, RowError> {
    if !(MIN_MILLIS..=MAX_MILLIS).contains(&millis) {
        return Err(RowError::Field {
            field,
            problem: "timestamp outside what Postgres can store",
        });
    }
    let magnitude = Duration::from_millis(millis.unsigned_abs());
    Ok(if millis >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    })
}

fn text(field: &'static str, value: &str) -> Result<(), RowError> {
    if value.contains('\0') {
        return Err(RowError::Field {
            field,
            problem: "contains a NUL character, which Postgres text cannot hold",
        });
    }
    Ok(())
}

fn tenant(value_tenant: &str, header: Option<&str>) -> Result<(), RowError> {
    text("tenant_id", value_tenant)?;
    if value_tenant.is_empty() {
        return Err(RowError::Tenant("the record names no tenant".into()));
    }
    match header {
        Some(h) if h != value_tenant => Err(RowError::Tenant(format!(
            "the `tenant` header says `{h}` but the record belongs to `{value_tenant}`"
        ))),
        _ => Ok(()),
    }
}

/// The tenant, learner and activity of a `progress` key
/// (`tenant|learner|activity`; the activity IRI may itself hold `|`).
///
/// # Errors
/// [`RowError::Key`] when the key is not of that form.
pub fn progress_key(key: &[u8]) -> Result<(String, String, String), RowError> {
    let key = std::str::from_utf8(key).map_err(|_| RowError::Key("the key is not UTF-8".into()))?;
    let mut parts = key.splitn(3, '|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(l), Some(a)) if !t.is_empty() && !l.is_empty() && !a.is_empty() => {
            text("key", key)?;
            Ok((t.to_string(), l.to_string(), a.to_string()))
        }
        _ => Err(RowError::Key(
            "a progress key is `tenant|learner|activity`".into(),
        )),
    }
}

/// Checks the text fields of a saga command Postgres will store (its
/// receipt, the erased learner's record).
///
/// # Errors
/// [`RowError::Field`] naming the first field Postgres would refuse.
pub fn command(c: &trellis_records::EraseCommand) -> Result<(), RowError> {
    for (field, value) in [
        ("command_id", c.command_id.as_str()),
        ("request_id", c.request_id.as_str()),
        ("tenant_id", c.tenant_id.as_str()),
        ("kind", c.kind.as_str()),
        ("learner", c.learner.as_deref().unwrap_or_default()),
    ] {
        text(field, value)?;
    }
    Ok(())
}

impl ProgressRow {
    /// Checks `value` (read from a record keyed `key`, with `header` as its
    /// `tenant` header) and converts it.
    ///
    /// # Errors
    /// [`RowError`] naming the first problem.
    pub fn new(
        value: LearnerProgress,
        key: Option<&[u8]>,
        header: Option<&str>,
        source: Source,
    ) -> Result<Self, RowError> {
        tenant(&value.tenant_id, header)?;
        if let Some(key) = key {
            let (t, l, a) = progress_key(key)?;
            if (t.as_str(), l.as_str(), a.as_str())
                != (
                    value.tenant_id.as_str(),
                    value.learner.as_str(),
                    value.activity_id.as_str(),
                )
            {
                return Err(RowError::Key(
                    "the key does not name the record's tenant, learner and activity".into(),
                ));
            }
        }
        text("learner", &value.learner)?;
        text("activity_id", &value.activity_id)?;
        text("course_id", value.course_id.as_deref().unwrap_or_default())?;
        text("completion", &value.completion)?;
        for e in &value.evidence {
            text("evidence", &e.status)?;
            text("evidence", &e.event_id)?;
        }
        let evidence = serde_json::to_value(&value.evidence).map_err(|_| RowError::Field {
            field: "evidence",
            problem: "cannot be written as JSON",
        })?;
        Ok(Self {
            first_activity_at: timestamp("first_activity_at", value.first_activity_at)?,
            last_activity_at: timestamp("last_activity_at", value.last_activity_at)?,
            evidence,
            value,
            source,
        })
    }

    /// The row's primary key.
    pub fn key(&self) -> (String, String, String) {
        (
            self.value.tenant_id.clone(),
            self.value.learner.clone(),
            self.value.activity_id.clone(),
        )
    }
}

impl CompletionRow {
    /// Checks `value` and converts it.
    ///
    /// # Errors
    /// [`RowError`] naming the first problem.
    pub fn new(value: Completion, header: Option<&str>, source: Source) -> Result<Self, RowError> {
        tenant(&value.tenant_id, header)?;
        for (field, v) in [
            ("completion_id", value.completion_id.as_str()),
            ("learner", value.learner.as_str()),
            ("activity_id", value.activity_id.as_str()),
            ("course_id", value.course_id.as_deref().unwrap_or_default()),
            ("kind", value.kind.as_str()),
        ] {
            text(field, v)?;
        }
        for id in &value.evidence_event_ids {
            text("evidence_event_ids", id)?;
        }
        Ok(Self {
            completed_at: timestamp("at", value.at)?,
            value,
            source,
        })
    }
}

impl AggregateRow {
    /// Checks `value` and converts it.
    ///
    /// # Errors
    /// [`RowError`] naming the first problem.
    pub fn new(value: Aggregate, header: Option<&str>, source: Source) -> Result<Self, RowError> {
        tenant(&value.tenant_id, header)?;
        for (field, v) in [
            ("window", value.window.as_str()),
            ("dimension", value.dimension.as_str()),
            ("dimension_value", value.dimension_value.as_str()),
        ] {
            text(field, v)?;
        }
        Ok(Self {
            window_start: timestamp("window_start", value.window_start)?,
            value,
            source,
        })
    }

    /// The cell this row is a revision of.
    pub fn cell(&self) -> (String, String, i64, String, String) {
        (
            self.value.tenant_id.clone(),
            self.value.window.clone(),
            self.value.window_start,
            self.value.dimension.clone(),
            self.value.dimension_value.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> LearnerProgress {
        LearnerProgress {
            last_activity_at: 1,
            ..LearnerProgress::attempted("t1", "p-1", "https://x/a|b", 0)
        }
    }

    const SOURCE: Source = Source {
        partition: 0,
        offset: 0,
        timestamp_ms: None,
    };

    #[test]
    fn an_activity_iri_may_hold_the_key_separator() {
        let row = ProgressRow::new(
            progress(),
            Some(b"t1|p-1|https://x/a|b"),
            Some("t1"),
            SOURCE,
        )
        .unwrap();
        assert_eq!(row.key().2, "https://x/a|b");
    }

    #[test]
    fn what_postgres_would_refuse_is_refused_here_with_a_reason() {
        let mut nul = progress();
        nul.learner = "p\0".into();
        let e = ProgressRow::new(nul, None, None, SOURCE).unwrap_err();
        assert_eq!(e.reason(), "WAREHOUSE_INVALID_ROW");

        let mut far = progress();
        far.last_activity_at = i64::MAX;
        let e = ProgressRow::new(far, None, None, SOURCE).unwrap_err();
        assert!(e.to_string().contains("last_activity_at"), "{e}");

        let e = ProgressRow::new(progress(), None, Some("t2"), SOURCE).unwrap_err();
        assert_eq!(e.reason(), "TENANT_MISMATCH");

        let e =
            ProgressRow::new(progress(), Some(b"t2|p-1|https://x/a|b"), None, SOURCE).unwrap_err();
        assert_eq!(e.reason(), "WAREHOUSE_INVALID_KEY");
    }

    #[test]
    fn timestamps_convert_on_both_sides_of_the_epoch() {
        let before = timestamp("t", -1_500).unwrap();
        assert_eq!(
            SystemTime::UNIX_EPOCH.duration_since(before).unwrap(),
            Duration::from_millis(1_500)
        );
        assert!(timestamp("t", MIN_MILLIS - 1).is_err());
        assert!(timestamp("t", MAX_MILLIS).is_ok());
        assert!(timestamp("t", MAX_MILLIS + 1).is_err());
        // Year 3000 is fine.
        assert!(timestamp("t", 32_503_680_000_000).is_ok());
    }
}
