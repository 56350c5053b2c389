//! `trellis-gdpr`: see the library docs.

trellis_runtime::processor_main!(
    "Runs data-subject requests (erasure, access) as a saga over the participants and answers on `gdpr.subject_request.acknowledged.v1`.",
    trellis_gdpr::Gdpr,
    trellis_gdpr::run
);
