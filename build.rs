//! Sets `openclaw_has_qemu`, `openclaw_kvm_is_pvm`,
//! `openclaw_has_sdk_clients`, `openclaw_has_postgres` and
//! `openclaw_has_schemathesis` for the root package's requirement-gated tests
//! (`tests/kvm_backend_in_qemu.rs`, `tests/kvm_backend.rs`,
//! `tests/llm_sdks.rs`, `tests/postgres_store.rs`, `tests/serve_schemathesis.rs`,
//! `tenants::postgres::tests`; see `test_requirements`): where the host lacks
//! them those tests are ignored with the reason, not "passed". The binary
//! does not read them.

use test_requirements::{emit_cfgs, Requirement};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    emit_cfgs(&[
        Requirement::Qemu,
        Requirement::KvmIsPvm,
        Requirement::SdkClients,
        Requirement::Postgres,
        Requirement::Schemathesis,
    ]);
}
