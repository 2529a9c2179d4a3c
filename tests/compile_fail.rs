//! Mistakes `#[derive(shmbus::Message)]` must reject, with the diagnostics checked in under
//! `tests/ui/*.stderr` (regenerate with `TRYBUILD=overwrite`, then read them).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
