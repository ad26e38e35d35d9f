//! Sets `openclaw_has_qemu` and `openclaw_kvm_is_pvm` for the root
//! package's requirement-gated tests (`tests/kvm_backend_in_qemu.rs`,
//! `tests/kvm_backend.rs`; see `test_requirements`): where the host lacks
//! them those tests are ignored with the reason, not "passed". The binary
//! does not read them.

use test_requirements::{emit_cfgs, Requirement};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    emit_cfgs(&[Requirement::Qemu, Requirement::KvmIsPvm]);
}
