//! `openclaw doctor` on this host (root, network namespaces: what the
//! netns session tests need too): every check named in its JSON, netns
//! usable, exit 0; and with `ip` and the guest image out of reach, no
//! backend usable, each no with its fix, exit 1.

use serde_json::Value;

mod support;
use support::{openclaw, text};

const CHECKS: &[&str] = &[
    "root",
    "net_namespace",
    "sandbox_namespaces",
    "cgroups",
    "iproute2",
    "work_volume",
    "kvm_device",
    "kvm_api_version",
    "kvm_preprobe",
    "kvm_boot_probe",
    "guest_image",
    "root_image",
    "storage",
];

fn doctor_json(cmd: &mut std::process::Command) -> (Option<i32>, Value, String) {
    let out = cmd
        .args(["doctor", "--json"])
        .output()
        .expect("openclaw doctor");
    let all = text(&out);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    (out.status.code(), json, all)
}

fn check<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {json}"))
}

#[test]
fn doctor_says_this_host_runs_netns_sessions_and_names_every_check() {
    let home = tempfile::tempdir().expect("home");
    let (code, json, all) = doctor_json(&mut openclaw(home.path()));
    let names: Vec<&str> = json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, CHECKS, "{all}");
    for c in json["checks"].as_array().expect("checks") {
        assert!(c["ok"].is_boolean(), "{c}");
        assert!(!c["detail"].as_str().expect("detail").is_empty(), "{c}");
        assert_eq!(
            c["ok"] == false,
            c["fix"].is_string(),
            "a fix for each no: {c}"
        );
    }
    for name in [
        "root",
        "net_namespace",
        "sandbox_namespaces",
        "cgroups",
        "storage",
    ] {
        assert_eq!(check(&json, name)["ok"], true, "{name}: {all}");
    }
    assert_eq!(json["backends"]["netns"]["usable"], true, "{all}");
    assert_eq!(json["can_run_sessions"], true, "{all}");
    assert_eq!(code, Some(0), "{all}");

    let out = openclaw(home.path())
        .arg("doctor")
        .output()
        .expect("doctor");
    let lines = text(&out);
    assert!(lines.contains("ok  net_namespace"), "{lines}");
    assert!(lines.contains("backend netns: usable"), "{lines}");
    assert_eq!(out.status.code(), Some(0), "{lines}");
}

#[test]
fn doctor_exits_one_when_no_backend_can_run() {
    let home = tempfile::tempdir().expect("home");
    let empty = tempfile::tempdir().expect("empty dir");
    // No `ip` (nor mkfs.ext4) on PATH; no guest image where sessions look.
    let (code, json, all) = doctor_json(
        openclaw(home.path())
            .env("PATH", empty.path())
            .env("OPENCLAW_GUEST_IMAGE", empty.path()),
    );
    assert_eq!(check(&json, "iproute2")["ok"], false, "{all}");
    assert!(check(&json, "iproute2")["fix"]
        .as_str()
        .is_some_and(|f| f.contains("iproute2")));
    assert_eq!(check(&json, "guest_image")["ok"], false, "{all}");
    let netns_missing = json["backends"]["netns"]["missing"].to_string();
    assert!(netns_missing.contains("iproute2"), "{all}");
    assert!(
        json["backends"]["kvm"]["missing"]
            .to_string()
            .contains("guest_image"),
        "{all}"
    );
    assert_eq!(json["can_run_sessions"], false, "{all}");
    assert_eq!(code, Some(1), "{all}");
}
