//! `trellis-audit`: see the library docs. Verification and proofs are
//! `trellis audit …`.

trellis_runtime::processor_main!(
    "Keeps RFC 6962 Merkle trees over every audited topic and anchors them in signed, hash-chained records on `audit.anchors`.",
    trellis_audit::Audit,
    trellis_audit::run
);
