//! A tenant's settings, `<tenant root>/settings.toml`: two tables. `[tenant]`
//! holds what the tenant sets for itself (defaults of its sessions);
//! `[admin]` holds what only the operator sets (the bounds those defaults
//! and every session of the tenant must keep). Each writer replaces only
//! its own table, so a tenant can never write an admin key: it is refused
//! by name before anything is written (`docs/control-plane.md`).

use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::root::{TenantRoot, SETTINGS};

/// Backends a session may ask for.
pub const BACKENDS: &[&str] = &["netns", "kvm"];
/// How a session's held requests are answered (`POST /v1/sessions`'s `approve`).
pub const APPROVE_MODES: &[&str] = &["deny", "auto", "api"];
/// The longest approval timeout taken, in seconds (a held request keeps a
/// connection of the sandbox open that long).
pub const MAX_APPROVAL_TIMEOUT_SECS: u64 = 3600;

/// Keys a tenant sets for itself.
pub const TENANT_KEYS: &[&str] = &["backend", "approve", "approval_timeout", "image"];
/// Keys only the admin sets (quotas are admin-only too, on their own route).
pub const ADMIN_KEYS: &[&str] = &[
    "allowed_backends",
    "allowed_images",
    "max_approval_timeout",
    "allow_policy",
    "allowed_approve",
];

/// The `[tenant]` table: defaults for the tenant's sessions; absent is
/// openclaw's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKeys {
    pub backend: Option<String>,
    pub approve: Option<String>,
    /// Seconds.
    pub approval_timeout: Option<u64>,
    /// An image name of the home's store (kvm sessions).
    pub image: Option<String>,
}

/// The `[admin]` table: bounds on the tenant's sessions; absent is no bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminKeys {
    pub allowed_backends: Option<Vec<String>>,
    pub allowed_images: Option<Vec<String>>,
    /// Seconds.
    pub max_approval_timeout: Option<u64>,
    /// `false`: the tenant's sessions need a token the operator minted
    /// (`capabilities`); the daemon mints no policy of the tenant's own,
    /// so what its sessions may do stays the operator's choice.
    pub allow_policy: Option<bool>,
    /// Approval modes its sessions may use. Unset: any, except `auto` when
    /// `allow_policy = false` (an operator that keeps what sessions may do
    /// keeps the human its tokens hold requests for).
    pub allowed_approve: Option<Vec<String>>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub tenant: TenantKeys,
    #[serde(default)]
    pub admin: AdminKeys,
}

/// A refused setting: the key at fault (the API's `field`) and why.
pub type SettingRefusal = (&'static str, String);

/// Serializes read-modify-write of settings files in this process, so a
/// tenant's write and the admin's at once cannot lose either table.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

impl Settings {
    /// The tenant's settings; a missing file (or one with comments only) is
    /// all defaults. A file that does not parse is an error: nothing is
    /// guessed about bounds the operator meant to set.
    pub fn read(root: &TenantRoot) -> Result<Settings> {
        let path = root.path().join(SETTINGS);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Replaces the `[tenant]` table (the other is kept); the settings now.
    pub fn replace_tenant(root: &TenantRoot, keys: TenantKeys) -> Result<Settings> {
        Self::update(root, |s| s.tenant = keys)
    }

    /// Replaces the `[admin]` table (the other is kept); the settings now.
    pub fn replace_admin(root: &TenantRoot, keys: AdminKeys) -> Result<Settings> {
        Self::update(root, |s| s.admin = keys)
    }

    fn update(root: &TenantRoot, change: impl FnOnce(&mut Settings)) -> Result<Settings> {
        let _held = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut settings = Self::read(root)?;
        change(&mut settings);
        let text = format!(
            "# Written by openclaw serve: [tenant] by the tenant (PUT /v1/settings),\n\
             # [admin] by the operator (PUT /v1/tenants/<name>/settings).\n{}",
            toml::to_string(&settings).context("encoding the settings")?
        );
        write_atomically(&root.path().join(SETTINGS), text.as_bytes())?;
        Ok(settings)
    }

    /// Where the tenant's own defaults break the admin's bounds: the key at
    /// fault. Checked when the tenant writes them, and again for every
    /// session (the admin may narrow the bounds later).
    pub fn tenant_within_bounds(&self) -> Result<(), SettingRefusal> {
        let (t, a) = (&self.tenant, &self.admin);
        if let Some(b) = &t.backend {
            backend_allowed(a, b).map_err(|why| ("backend", why))?;
        }
        if let Some(secs) = t.approval_timeout {
            timeout_allowed(a, secs).map_err(|why| ("approval_timeout", why))?;
        }
        if let Some(image) = &t.image {
            image_allowed(a, image).map_err(|why| ("image", why))?;
        }
        if let Some(mode) = &t.approve {
            approve_allowed(a, mode).map_err(|why| ("approve", why))?;
        }
        Ok(())
    }

    /// JSON of both tables, every key present (`null`: unset).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "tenant": {
                "backend": self.tenant.backend,
                "approve": self.tenant.approve,
                "approval_timeout": self.tenant.approval_timeout,
                "image": self.tenant.image,
            },
            "admin": {
                "allowed_backends": self.admin.allowed_backends,
                "allowed_images": self.admin.allowed_images,
                "max_approval_timeout": self.admin.max_approval_timeout,
                "allow_policy": self.admin.allow_policy,
                "allowed_approve": self.admin.allowed_approve,
            }
        })
    }
}

/// Whether the admin's bounds let a session use `backend`.
pub fn backend_allowed(admin: &AdminKeys, backend: &str) -> Result<(), String> {
    match &admin.allowed_backends {
        Some(list) if !list.iter().any(|b| b == backend) => Err(format!(
            "the backend {backend} is not allowed for this tenant (allowed: {})",
            list.join(", ")
        )),
        _ => Ok(()),
    }
}

/// Whether the admin's bounds let a held request wait `secs`.
pub fn timeout_allowed(admin: &AdminKeys, secs: u64) -> Result<(), String> {
    match admin.max_approval_timeout {
        Some(max) if secs > max => Err(format!("at most {max} seconds for this tenant")),
        _ => Ok(()),
    }
}

/// Whether the admin's bounds let a session answer held requests as `mode`
/// (`deny`, `auto`, `api`). Fail closed: with no `allowed_approve`, an
/// operator that mints the tenant's tokens (`allow_policy = false`) has
/// chosen which requests wait for a human, and `auto` would answer them
/// for no one.
pub fn approve_allowed(admin: &AdminKeys, mode: &str) -> Result<(), String> {
    match &admin.allowed_approve {
        Some(list) if !list.iter().any(|m| m == mode) => Err(format!(
            "approve {mode} is not allowed for this tenant (allowed: {})",
            list.join(", ")
        )),
        Some(_) => Ok(()),
        None if mode == "auto" && admin.allow_policy == Some(false) => Err(
            "approve auto is not allowed for this tenant: its operator mints its tokens \
             (allow_policy = false) and their held requests wait for a human; the operator \
             may allow it with allowed_approve"
                .into(),
        ),
        None => Ok(()),
    }
}

/// Whether the admin's bounds let a session boot `image`.
pub fn image_allowed(admin: &AdminKeys, image: &str) -> Result<(), String> {
    match &admin.allowed_images {
        Some(list) if !list.iter().any(|i| i == image) => Err(format!(
            "the image is not allowed for this tenant (allowed: {})",
            list.join(", ")
        )),
        _ => Ok(()),
    }
}

/// An image name as settings and `POST /v1/sessions` take it: a name of
/// the home's store, never a path.
pub fn valid_image_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `PUT /v1/settings`'s body: the tenant's own keys. An admin key is
/// refused by its name (the tenant cannot set it); an unknown key names
/// `body`.
pub fn tenant_keys_from_json(body: &Map<String, Value>) -> Result<TenantKeys, SettingRefusal> {
    let mut keys = TenantKeys::default();
    for (key, value) in body {
        if let Some(admin_key) = ADMIN_KEYS.iter().find(|k| *k == key) {
            return Err((
                admin_key,
                "an admin-only setting: only the operator sets it (the admin token, \
                 PUT /v1/tenants/{name}/settings)"
                    .into(),
            ));
        }
        let Some(field) = TENANT_KEYS.iter().find(|k| *k == key) else {
            return Err((
                "body",
                format!("unknown setting; a tenant sets {}", TENANT_KEYS.join(", ")),
            ));
        };
        if value.is_null() {
            continue;
        }
        match *field {
            "backend" => keys.backend = Some(one_of(field, value, BACKENDS)?),
            "approve" => keys.approve = Some(one_of(field, value, APPROVE_MODES)?),
            "approval_timeout" => keys.approval_timeout = Some(timeout(field, value)?),
            _ => keys.image = Some(image_name(field, value)?),
        }
    }
    Ok(keys)
}

/// The admin's `PUT /v1/tenants/{name}/settings` body: admin keys only (a
/// tenant's own key names itself: the tenant sets it).
pub fn admin_keys_from_json(body: &Map<String, Value>) -> Result<AdminKeys, SettingRefusal> {
    let mut keys = AdminKeys::default();
    for (key, value) in body {
        if let Some(tenant_key) = TENANT_KEYS.iter().find(|k| *k == key) {
            return Err((
                tenant_key,
                "the tenant's own setting (PUT /v1/settings with its token)".into(),
            ));
        }
        let Some(field) = ADMIN_KEYS.iter().find(|k| *k == key) else {
            return Err((
                "body",
                format!("unknown setting; the admin sets {}", ADMIN_KEYS.join(", ")),
            ));
        };
        if value.is_null() {
            continue;
        }
        match *field {
            "allowed_backends" => {
                let list = string_list(field, value)?;
                if let Some(bad) = list.iter().find(|b| !BACKENDS.contains(&b.as_str())) {
                    return Err((field, format!("{bad:?} is not a backend (netns, kvm)")));
                }
                keys.allowed_backends = Some(list);
            }
            "allowed_images" => {
                let list = string_list(field, value)?;
                if list.iter().any(|i| !valid_image_name(i)) {
                    return Err((
                        field,
                        "image names are 1 to 64 of A-Z a-z 0-9 . _ - (no paths)".into(),
                    ));
                }
                keys.allowed_images = Some(list);
            }
            "allowed_approve" => {
                let list = string_list(field, value)?;
                if let Some(bad) = list.iter().find(|m| !APPROVE_MODES.contains(&m.as_str())) {
                    return Err((
                        field,
                        format!(
                            "{bad:?} is not an approval mode ({})",
                            APPROVE_MODES.join(", ")
                        ),
                    ));
                }
                keys.allowed_approve = Some(list);
            }
            "allow_policy" => {
                let allowed = value
                    .as_bool()
                    .ok_or_else(|| (*field, "expected true or false".to_owned()))?;
                keys.allow_policy = Some(allowed);
            }
            _ => keys.max_approval_timeout = Some(timeout(field, value)?),
        }
    }
    Ok(keys)
}

fn one_of(field: &'static str, value: &Value, allowed: &[&str]) -> Result<String, SettingRefusal> {
    value
        .as_str()
        .filter(|v| allowed.contains(v))
        .map(str::to_owned)
        .ok_or_else(|| (field, format!("expected one of {}", allowed.join(", "))))
}

fn timeout(field: &'static str, value: &Value) -> Result<u64, SettingRefusal> {
    value
        .as_u64()
        .filter(|s| (1..=MAX_APPROVAL_TIMEOUT_SECS).contains(s))
        .ok_or_else(|| {
            (
                field,
                format!("expected whole seconds from 1 to {MAX_APPROVAL_TIMEOUT_SECS}"),
            )
        })
}

fn image_name(field: &'static str, value: &Value) -> Result<String, SettingRefusal> {
    value
        .as_str()
        .filter(|v| valid_image_name(v))
        .map(str::to_owned)
        .ok_or_else(|| {
            (
                field,
                "an image name: 1 to 64 of A-Z a-z 0-9 . _ - (no paths)".into(),
            )
        })
}

fn string_list(field: &'static str, value: &Value) -> Result<Vec<String>, SettingRefusal> {
    let mut list: Vec<String> = value
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
        .ok_or_else(|| (field, "expected an array of strings".to_owned()))?;
    list.sort();
    list.dedup();
    Ok(list)
}

/// Replaces `path` with `bytes` whole ([`atomic_file::replace`]), private
/// to the owner: a reader sees the old file or the new one, never a part.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    crate::atomic_file::replace(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn a_tenant_is_refused_every_admin_key_by_name() {
        for key in ADMIN_KEYS {
            let body = map(json!({"backend": "netns", *key: null}));
            assert_eq!(
                tenant_keys_from_json(&body).expect_err(key).0,
                *key,
                "even null names the admin key"
            );
        }
        let err = tenant_keys_from_json(&map(json!({"quota": 1}))).expect_err("unknown");
        assert_eq!(err.0, "body");
        let err = admin_keys_from_json(&map(json!({"backend": "kvm"}))).expect_err("tenant key");
        assert_eq!(err.0, "backend");
    }

    #[test]
    fn values_are_checked_and_the_tables_kept_apart_on_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = TenantRoot::of(
            tmp.path(),
            &crate::tenants::TenantName::parse("a").expect("name"),
        );
        std::fs::create_dir_all(root.path()).expect("mkdir");
        std::fs::write(root.path().join(SETTINGS), "# nothing yet\n").expect("write");
        assert_eq!(Settings::read(&root).expect("read"), Settings::default());

        for bad in [
            json!({"backend": "docker"}),
            json!({"approve": "prompt"}),
            json!({"approval_timeout": 0}),
            json!({"approval_timeout": MAX_APPROVAL_TIMEOUT_SECS + 1}),
            json!({"approval_timeout": "60"}),
            json!({"image": "../x"}),
        ] {
            let key = bad
                .as_object()
                .expect("o")
                .keys()
                .next()
                .expect("k")
                .clone();
            assert_eq!(tenant_keys_from_json(&map(bad)).expect_err(&key).0, key);
        }
        let tenant = tenant_keys_from_json(&map(json!({
            "backend": "kvm", "approve": "api", "approval_timeout": 300, "image": "debian"
        })))
        .expect("valid");
        Settings::replace_tenant(&root, tenant.clone()).expect("write");
        let admin = admin_keys_from_json(&map(json!({
            "allowed_backends": ["netns"], "max_approval_timeout": 60
        })))
        .expect("valid");
        let now = Settings::replace_admin(&root, admin.clone()).expect("write");
        assert_eq!(
            now.tenant, tenant,
            "the admin's write kept the tenant's table"
        );
        assert_eq!(Settings::read(&root).expect("read"), now);
        // The admin narrowed the bounds under the tenant's defaults.
        assert_eq!(now.tenant_within_bounds().expect_err("kvm").0, "backend");
        let now = Settings::replace_tenant(
            &root,
            TenantKeys {
                approval_timeout: Some(120),
                ..TenantKeys::default()
            },
        )
        .expect("write");
        assert_eq!(
            now.admin, admin,
            "the tenant's write kept the admin's table"
        );
        assert_eq!(
            now.tenant_within_bounds().expect_err("timeout").0,
            "approval_timeout"
        );
        std::fs::write(root.path().join(SETTINGS), "[admin]\nquota = 1\n").expect("write");
        assert!(
            Settings::read(&root).is_err(),
            "an unknown key is not guessed at"
        );
    }
}
