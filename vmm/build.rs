//! Sets `openclaw_has_kvm` / `openclaw_has_tun` for `tests/kvm_smoke.rs` and the
//! tap unit test in `devices/virtio/net/device.rs`
//! (`test_requirements`): where /dev/kvm is absent its tests are ignored
//! with the reason, not "passed". Nothing else of the crate reads them.

use test_requirements::{emit_cfgs, Requirement};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    emit_cfgs(&[Requirement::Kvm, Requirement::Tun]);
}
