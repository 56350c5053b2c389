//! `trellis-analytics`: see the library docs.

trellis_runtime::processor_main!(
    "Aggregates `protected` into tenant-tagged tumbling-window cells with small-cell suppression, for warehouses.",
    trellis_analytics::Analytics,
    trellis_analytics::run
);
