//! `GET /openapi.json`: the OpenAPI 3.1 document of exactly what
//! `routes.rs` serves, built here with serde_json. `tests/serve_api.rs`
//! walks every path and method in it against a running daemon and checks
//! each answer's status is one the document lists.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
    })
}

/// The responses every `/v1` operation may give besides its own.
fn v1_errors(mut responses: Value, not_found: &str) -> Value {
    let map = responses.as_object_mut().expect("responses is an object");
    map.insert(
        "400".into(),
        error_response("bad input; `error.field` names it"),
    );
    map.insert(
        "401".into(),
        error_response("missing or wrong bearer token"),
    );
    map.insert("404".into(), error_response(not_found));
    let mut quota = error_response(
        "a quota of the tenant is reached (`error.code` quota_exceeded, `error.field` names it: \
         requests_per_minute on any /v1 route; sessions, llm_tokens_per_day, usd_per_day on a create)",
    );
    quota["headers"] = json!({"Retry-After": {
        "description": "seconds until the quota may let the request through",
        "schema": {"type": "integer", "minimum": 1}}});
    map.insert("429".into(), quota);
    map.insert(
        "500".into(),
        error_response("the request failed; the daemon's log has the cause under X-Request-Id"),
    );
    responses
}

const TENANT_404: &str =
    "no such session, a session of another tenant, or the admin token (these are tenant routes)";
const ADMIN_404: &str = "no such tenant, or a tenant token (these are admin routes)";

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true,
           "description": "session id: letters, digits, '-', '_', '.', not starting with '.'; never percent-decoded",
           "schema": {"type": "string", "maxLength": 128}})
}

fn name_param() -> Value {
    json!({"name": "name", "in": "path", "required": true,
           "schema": {"$ref": "#/components/schemas/TenantName"}})
}

fn secret_name_param() -> Value {
    json!({"name": "name", "in": "path", "required": true,
           "description": "the secret's name: 1 to 64 of a-z, 0-9 and _",
           "schema": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"}})
}

pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "openclaw serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The control plane of openclaw: tenants, their sessions and usage. \
                Authenticate with `Authorization: Bearer <token>`: a tenant token (tk_<name>_<32 hex>) \
                for tenant routes, the admin token (tkadm_<32 hex>) for admin routes; the other \
                kind gets 404. Every response carries X-Request-Id."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas()
        },
        "paths": paths()
    })
}

/// The document's paths (a function of its own: one `json!` holding the
/// whole document passes the macro's recursion limit).
fn paths() -> Value {
    json!({
        "/healthz": {"get": {
            "summary": "the daemon is alive", "security": [],
            "responses": {"200": ok("alive", "Health")}
        }},
        "/readyz": {"get": {
            "summary": "the store answers, every tenant has its directory and keys, and `openclaw doctor` finds a backend that can start a session (its checks cached 10 s)", "security": [],
            "responses": {"200": ok("ready", "Readiness"), "503": ok("not ready; the failing check says why", "Readiness")}
        }},
        "/metrics": {"get": {
            "summary": "Prometheus text (admin token): sessions by tenant, state and backend; decisions by kind; receipts; today's LLM tokens and USD by tenant; quota refusals; the proxy request latency histogram by tenant and backend",
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": error_response("missing or wrong bearer token"),
                "404": error_response("a tenant token (this is an admin route)"),
                "405": error_response("only GET"),
                "500": error_response("the request failed; the daemon's log has the cause under X-Request-Id")
            }
        }},
        "/openapi.json": {"get": {
            "summary": "this document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}
        }},
        "/v1/sessions": {
            "get": {
                "summary": "the tenant's sessions, newest first", "security": [{"bearer": []}],
                "responses": v1_errors(json!({"200": ok("sessions", "SessionList")}), TENANT_404)
            },
            "post": {
                "summary": "start a session (`openclaw run` in the tenant's layout); answered once its session.json exists",
                "security": [{"bearer": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateSession"}}}},
                "responses": v1_errors(json!({
                    "201": ok("started", "SessionCreated"),
                    "413": error_response("body over 64 KiB plus the workdir archive's bound (8 MiB, in base64)"),
                    "415": error_response("not application/json"),
                    "503": error_response("the daemon is shutting down (SIGTERM): no new sessions")
                }), TENANT_404)
            }
        },
        "/v1/sessions/{id}/bundle": {"get": {
            "summary": "an ended session's bundle as .tar.gz (symlinks stored as links, never followed)",
            "security": [{"bearer": []}], "parameters": [id_param()],
            "responses": v1_errors(json!({
                "200": {"description": "the bundle", "content": {"application/gzip": {"schema": {"type": "string", "contentMediaType": "application/gzip"}}}},
                "409": error_response("the session is still running")
            }), TENANT_404)
        }},
        "/v1/sessions/{id}/approvals": {"get": {
            "summary": "a running session's pending approvals",
            "security": [{"bearer": []}], "parameters": [id_param()],
            "responses": v1_errors(json!({
                "200": ok("the pending approvals", "PendingList"),
                "409": error_response("the session is not running")
            }), TENANT_404)
        }},
        "/v1/sessions/{id}/approvals/{approval_id}": {"post": {
            "summary": "answer a pending approval (as `openclaw approve|deny`; the receipt names approver api:<tenant>)",
            "security": [{"bearer": []}],
            "parameters": [id_param(), {"name": "approval_id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answer"}}}},
            "responses": v1_errors(json!({
                "200": ok("answered: this answer is the one the session acts on", "Answered"),
                "409": error_response("the session is not running, or the approval was already decided (by another answer, whose the message names, or its timeout): this answer was not taken"),
                "413": error_response("body over 64 KiB"),
                "415": error_response("not application/json")
            }), "no such session or pending approval (never asked, answered, timed out), a session of another tenant, or the admin token")
        }},
        "/v1/sessions/{id}/events": {"get": {
            "summary": "a running session's events as server-sent events (action, pending, lagged, then end), in order",
            "security": [{"bearer": []}], "parameters": [id_param()],
            "responses": v1_errors(json!({
                "200": {"description": "the stream; ends when the session ends", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "409": error_response("the session is not running")
            }), TENANT_404)
        }},
        "/v1/sessions/{id}/stop": {"post": {
            "summary": "stop a running session (SIGTERM; its receipt chain is closed as it ends)",
            "security": [{"bearer": []}], "parameters": [id_param()],
            "responses": v1_errors(json!({
                "202": ok("stopping", "SessionStopping"),
                "409": error_response("the session is not running under this daemon")
            }), TENANT_404)
        }},
        "/v1/sessions/{id}": {"get": {
            "summary": "one session's report", "security": [{"bearer": []}],
            "parameters": [id_param()],
            "responses": v1_errors(json!({"200": ok("the report", "Report")}), TENANT_404)
        }},
        "/v1/sessions/{id}/receipts/verify": {"get": {
            "summary": "verify the session's receipt chain and re-derive its decisions", "security": [{"bearer": []}],
            "parameters": [id_param()],
            "responses": v1_errors(json!({"200": ok("the verification (its status may be invalid)", "Verification")}), TENANT_404)
        }},
        "/v1/usage": {"get": {
            "summary": "LLM usage: the tenant's own; the admin's: all tenants or one",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "period", "in": "query", "required": false, "schema": {"type": "string", "default": "current-month"},
                 "description": "today, yesterday, current-month, last-month, YYYY-MM, YYYY-MM-DD or FROM..TO (UTC days)"},
                {"name": "by", "in": "query", "required": false, "schema": {"type": "string", "default": "day,tenant,model"},
                 "description": "comma list of tenant, user, session, model, day"},
                {"name": "tenant", "in": "query", "required": false, "schema": {"$ref": "#/components/schemas/TenantName"},
                 "description": "admin: only this tenant; a tenant token may name only itself"}
            ],
            "responses": v1_errors(json!({"200": ok("the report", "UsageReport")}), "a tenant token naming another tenant")
        }},
        "/v1/secrets": {"get": {
            "summary": "the tenant's secrets: names and fields, never values", "security": [{"bearer": []}],
            "responses": v1_errors(json!({"200": ok("the secrets", "SecretList")}), TENANT_404)
        }},
        "/v1/secrets/{name}": {
            "put": {
                "summary": "store (or replace) one of the tenant's secrets, sealed at rest; one audit line, without the value",
                "security": [{"bearer": []}],
                "parameters": [secret_name_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PutSecret"}}}},
                "responses": v1_errors(json!({
                    "200": ok("stored", "SecretStored"),
                    "413": error_response("body over 64 KiB"),
                    "415": error_response("not application/json")
                }), TENANT_404)
            },
            "delete": {
                "summary": "remove one of the tenant's secrets; one audit line",
                "security": [{"bearer": []}],
                "parameters": [secret_name_param()],
                "responses": v1_errors(json!({"200": ok("removed", "SecretRemoved")}),
                    "no such secret, or the admin token (these are tenant routes)")
            }
        },
        "/v1/settings": {
            "get": {
                "summary": "the tenant's settings: its own defaults and the admin's bounds (read-only here)",
                "security": [{"bearer": []}],
                "responses": v1_errors(json!({"200": ok("the settings", "Settings")}), TENANT_404)
            },
            "put": {
                "summary": "replace the tenant's own settings (defaults of its sessions); an admin-only key is refused naming it; audited as settings.set",
                "security": [{"bearer": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TenantSettings"}}}},
                "responses": v1_errors(json!({
                    "200": ok("the settings now", "Settings"),
                    "413": error_response("body over 64 KiB"),
                    "415": error_response("not application/json")
                }), TENANT_404)
            }
        },
        "/v1/ratecard": {
            "get": {
                "summary": "the rate card new sessions price LLM calls with (admin): <home>/rates.toml, or the built-in card",
                "security": [{"bearer": []}],
                "responses": v1_errors(json!({"200": ok("the card", "RateCard")}), "a tenant token (this is an admin route)")
            },
            "put": {
                "summary": "replace the rate card (admin): checked as sessions read it (400 `rates` naming the line; the old card stays), written atomically; audited as ratecard.set",
                "security": [{"bearer": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PutRateCard"}}}},
                "responses": v1_errors(json!({
                    "200": ok("the card now", "RateCardSet"),
                    "413": error_response("body over 64 KiB"),
                    "415": error_response("not application/json")
                }), "a tenant token (this is an admin route)")
            }
        },
        "/v1/tenants": {
            "get": {
                "summary": "list tenants (admin)", "security": [{"bearer": []}],
                "responses": v1_errors(json!({"200": ok("tenants", "TenantList")}), ADMIN_404)
            },
            "post": {
                "summary": "create a tenant (admin); its token is in the answer, once", "security": [{"bearer": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateTenant"}}}},
                "responses": v1_errors(json!({
                    "201": ok("created", "TenantToken"),
                    "409": error_response("the tenant exists"),
                    "413": error_response("body over 64 KiB"),
                    "415": error_response("not application/json")
                }), ADMIN_404)
            }
        },
        "/v1/tenants/{name}": {"delete": {
            "summary": "delete a tenant (admin): its token stops working, its directory is moved aside",
            "security": [{"bearer": []}], "parameters": [name_param()],
            "responses": v1_errors(json!({"200": ok("deleted", "TenantDeleted")}), ADMIN_404)
        }},
        "/v1/tenants/{name}/quotas": {
            "get": {
                "summary": "a tenant's quotas (admin); null is no limit", "security": [{"bearer": []}],
                "parameters": [name_param()],
                "responses": v1_errors(json!({"200": ok("the quotas", "TenantQuotas")}), ADMIN_404)
            },
            "put": {
                "summary": "replace a tenant's quotas (admin): all four at once, absent or null is no limit; audited as quota.set",
                "security": [{"bearer": []}], "parameters": [name_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Quotas"}}}},
                "responses": v1_errors(json!({
                    "200": ok("the quotas now", "TenantQuotas"),
                    "413": error_response("body over 64 KiB"),
                    "415": error_response("not application/json")
                }), ADMIN_404)
            }
        },
        "/v1/tenants/{name}/settings": {
            "get": {
                "summary": "a tenant's settings (admin): its own and the admin's bounds", "security": [{"bearer": []}],
                "parameters": [name_param()],
                "responses": v1_errors(json!({"200": ok("the settings", "TenantSettingsOf")}), ADMIN_404)
            },
            "put": {
                "summary": "replace a tenant's admin-only settings (admin): bounds its sessions and its own settings keep; audited as settings.set",
                "security": [{"bearer": []}], "parameters": [name_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AdminSettings"}}}},
                "responses": v1_errors(json!({
                    "200": ok("the settings now", "TenantSettingsOf"),
                    "413": error_response("body over 64 KiB"),
                    "415": error_response("not application/json")
                }), ADMIN_404)
            }
        },
        "/v1/tenants/{name}/token": {"post": {
            "summary": "rotate a tenant's token (admin): the old one is refused at once",
            "security": [{"bearer": []}], "parameters": [name_param()],
            "responses": v1_errors(json!({"200": ok("the new token", "TenantToken")}), ADMIN_404)
        }}
    })
}

/// The document's schemas (for the same reason as [`paths`]).
fn schemas() -> Value {
    let mut first = json!({
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {
                "type": "object", "required": ["code", "message", "field"],
                "properties": {
                    "code": {"type": "string", "enum": [
                        "unauthorized", "not_found", "invalid", "conflict",
                        "method_not_allowed", "unsupported_media_type", "too_large", "quota_exceeded", "unavailable",
                        "internal"]},
                    "message": {"type": "string"},
                    "field": {"type": ["string", "null"]}
                }
            }}
        },
        "TenantName": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
        "Quotas": {"type": "object", "additionalProperties": false,
            "description": "a tenant's quotas; absent or null is no limit; days are UTC days",
            "properties": {
                "sessions": {"type": ["integer", "null"], "minimum": 0, "description": "sessions running at once"},
                "requests_per_minute": {"type": ["integer", "null"], "minimum": 0, "description": "/v1 requests in any 60 s window"},
                "llm_tokens_per_day": {"type": ["integer", "null"], "minimum": 0, "description": "LLM input + output tokens per day"},
                "usd_per_day": {"type": ["number", "null"], "minimum": 0, "maximum": 1e9, "description": "US dollars of LLM calls per day (kept to the micro-dollar)"}
            }},
        "TenantQuotas": {"type": "object",
            "required": ["name", "sessions", "requests_per_minute", "llm_tokens_per_day", "usd_per_day"],
            "properties": {
                "name": {"$ref": "#/components/schemas/TenantName"},
                "sessions": {"type": ["integer", "null"]},
                "requests_per_minute": {"type": ["integer", "null"]},
                "llm_tokens_per_day": {"type": ["integer", "null"]},
                "usd_per_day": {"type": ["number", "null"]}
            }},
        "Tenant": {
            "type": "object", "required": ["name", "created_at", "token_issued_at"],
            "properties": {
                "name": {"$ref": "#/components/schemas/TenantName"},
                "created_at": {"type": "string", "format": "date-time"},
                "token_issued_at": {"type": "string", "format": "date-time"}
            }
        },
        "TenantList": {"type": "object", "required": ["tenants"],
            "properties": {"tenants": {"type": "array", "items": {"$ref": "#/components/schemas/Tenant"}}}},
        "TenantToken": {
            "type": "object", "required": ["name", "token"],
            "properties": {"name": {"$ref": "#/components/schemas/TenantName"},
                           "token": {"type": "string", "description": "shown once; only its SHA-256 is stored"}}
        },
        "TenantDeleted": {"type": "object", "required": ["name", "deleted"],
            "properties": {"name": {"$ref": "#/components/schemas/TenantName"}, "deleted": {"const": true}}},
        "CreateTenant": {"type": "object", "required": ["name"], "additionalProperties": false,
            "properties": {"name": {"$ref": "#/components/schemas/TenantName"}}}
    });
    // Two literals: one would pass `json!`'s macro recursion limit.
    let rest = json!({
        "SessionRow": {"type": "object", "required": ["id", "status", "live", "backend", "started_at"],
            "description": "one row of the sessions list (as `openclaw ui` shows it)",
            "properties": {"id": {"type": "string"}, "status": {"type": "string"},
                           "live": {"type": "boolean"}, "backend": {"type": "string"},
                           "started_at": {"type": "string"}, "receipts": {"type": "string"}}},
        "SecretList": {"type": "object", "required": ["secrets"], "properties": {"secrets": {"type": "array", "items": {
            "type": "object", "required": ["name", "updated_at"],
            "properties": {"name": {"type": "string"}, "updated_at": {"type": "string"},
                           "hosts": {"type": "array", "items": {"type": "string"}}, "header": {"type": "string"},
                           "format": {"type": "string"}, "placement": {"type": "array", "items": {"type": "string"}}}}}}},
        "PutSecret": {"type": "object", "required": ["value"], "additionalProperties": false,
            "properties": {
                "value": {"type": "string", "minLength": 1, "description": "the secret; never shown again, never logged or audited"},
                "hosts": {"type": "array", "items": {"type": "string"}, "description": "use it only at these hosts (the capability token must grant it too)"},
                "header": {"type": "string", "description": "inject it in this header at granted hosts"},
                "format": {"type": "string", "description": "the header's text, {} replaced by the value (default {})"},
                "placement": {"type": "array", "items": {"type": "string"}, "description": "where else its placeholder may go: header:NAME, json:/pointer, form:field, query:name"}
            }},
        "SecretStored": {"type": "object", "required": ["name", "stored"],
            "properties": {"name": {"type": "string"}, "stored": {"const": true}}},
        "SecretRemoved": {"type": "object", "required": ["name", "removed"],
            "properties": {"name": {"type": "string"}, "removed": {"const": true}}},
        "CreateSession": {"type": "object", "required": ["command"], "additionalProperties": false,
            "description": "exactly one of capabilities and policy",
            "oneOf": [{"required": ["capabilities"]}, {"required": ["policy"]}],
            "properties": {
                "capabilities": {"type": "string", "description": "the .cap file's text: a token minted under this tenant's root key"},
                "policy": {"type": "string", "description": "a policy (TOML, docs/capabilities.md), minted by the daemon under this tenant's root key; refused where the admin set allow_policy false"},
                "command": {"type": "array", "minItems": 1, "items": {"type": "string"}, "description": "the agent's argv"},
                "backend": {"type": "string", "enum": ["netns", "kvm"], "description": "kvm only where /dev/kvm exists; default: the tenant's setting, else netns; within the admin's allowed_backends"},
                "image": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", "description": "kvm only: a name of the home's image store (`openclaw image list`); default: the tenant's setting, else the newest image named debian"},
                "approve": {"type": "string", "enum": ["deny", "auto", "api"], "description": "how held requests are answered: denied, approved, or held for POST /v1/sessions/{id}/approvals/{approval_id}; default: the tenant's setting, else deny; outside the admin's allowed_approve (or auto under allow_policy false): 400"},
                "approval_timeout": {"type": "integer", "minimum": 1, "maximum": 3600, "description": "seconds a held request waits before it is denied; default: the tenant's setting, else 120; at most the admin's max_approval_timeout"},
                "task": {"type": "string", "description": "passed to the command as $OPENCLAW_TASK"},
                "secrets": {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"}, "uniqueItems": true, "description": "names of the tenant's secrets (`openclaw secrets set --tenant`) the session may use; the sandbox sees placeholders"},
                "workdir": {"type": "string", "contentEncoding": "base64", "contentMediaType": "application/gzip", "description": "the sandbox's starting /work: a .tar.gz in base64, at most 8 MiB, unpacking to at most 64 MiB and 10000 entries; relative paths without '..', links that stay inside, no devices"}
            }},
        "SessionCreated": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
        "SessionStopping": {"type": "object", "required": ["id", "stopping"],
            "properties": {"id": {"type": "string"}, "stopping": {"const": true}}},
        "PendingList": {"type": "object", "required": ["pending"],
            "properties": {"pending": {"type": "array", "items": {"type": "object",
                "required": ["id", "action", "reason", "decision_seq", "asked_at", "timeout", "remaining_ms"],
                "description": "as the control socket gives it (docs/ui.md)"}}}},
        "Answer": {"type": "object", "required": ["answer"], "additionalProperties": false,
            "properties": {"answer": {"type": "string", "enum": ["approve", "deny"]}}},
        "Answered": {"type": "object", "required": ["id", "approval_id", "answer"],
            "properties": {"id": {"type": "string"}, "approval_id": {"type": "integer"},
                           "answer": {"type": "string", "enum": ["approve", "deny"]}}},
        "SessionList": {"type": "object", "required": ["sessions"],
            "properties": {"sessions": {"type": "array", "items": {"$ref": "#/components/schemas/SessionRow"}}}},
        "Report": {"type": "object", "required": ["session"],
            "description": "the session's report, as report.json (docs/reports.md)"},
        "Verification": {"type": "object", "required": ["status"],
            "description": "`openclaw verify --json` against the tenant's receipt key and root key",
            "properties": {"status": {"type": "string", "enum": ["valid", "invalid", "unreadable"]}}},
        "UsageReport": {"type": "object", "required": ["period", "by", "rows", "total"],
            "description": "`openclaw usage report --json` (docs/metering.md)"},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        "TenantSettings": {"type": "object", "additionalProperties": false,
            "description": "the tenant's own settings: defaults of its sessions; absent or null is openclaw's default",
            "properties": {
                "backend": {"type": ["string", "null"], "enum": ["netns", "kvm", null]},
                "approve": {"type": ["string", "null"], "enum": ["deny", "auto", "api", null]},
                "approval_timeout": {"type": ["integer", "null"], "minimum": 1, "maximum": 3600},
                "image": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
            }},
        "AdminSettings": {"type": "object", "additionalProperties": false,
            "description": "admin-only settings: bounds of the tenant's sessions and settings; absent or null is no bound",
            "properties": {
                "allowed_backends": {"type": ["array", "null"], "items": {"type": "string", "enum": ["netns", "kvm"]}},
                "allowed_images": {"type": ["array", "null"], "items": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}},
                "max_approval_timeout": {"type": ["integer", "null"], "minimum": 1, "maximum": 3600},
                "allow_policy": {"type": ["boolean", "null"], "description": "false: sessions need a token the operator minted (capabilities), no policy"},
                "allowed_approve": {"type": ["array", "null"], "items": {"type": "string", "enum": ["deny", "auto", "api"]}, "description": "approval modes its sessions may use; null: any, but not auto when allow_policy is false"}
            }},
        "Settings": {"type": "object", "required": ["tenant", "admin"],
            "properties": {"tenant": {"type": "object"}, "admin": {"type": "object"}}},
        "TenantSettingsOf": {"type": "object", "required": ["name", "tenant", "admin"],
            "properties": {"name": {"$ref": "#/components/schemas/TenantName"}, "tenant": {"type": "object"}, "admin": {"type": "object"}}},
        "PutRateCard": {"type": "object", "required": ["rates"], "additionalProperties": false,
            "properties": {"rates": {"type": "string", "description": "the rates.toml text (docs/metering.md)"}}},
        "RateCard": {"type": "object", "required": ["rates", "sha256", "models"],
            "properties": {
                "rates": {"type": ["string", "null"], "description": "the file's text; null: no file, the built-in card"},
                "sha256": {"type": ["string", "null"], "description": "the card's hash as receipts name it; null when the file does not parse"},
                "models": {"type": ["integer", "null"]}
            }},
        "RateCardSet": {"type": "object", "required": ["sha256", "models"],
            "properties": {"sha256": {"type": "string"}, "models": {"type": "integer"}}},
        "Readiness": {"type": "object", "required": ["ready", "checks"],
            "properties": {"ready": {"type": "boolean"}, "checks": {"type": "array", "items": {
                "type": "object", "required": ["name", "ok", "detail"],
                "properties": {"name": {"type": "string", "enum": ["storage", "tenant_keys", "backends"]},
                               "ok": {"type": "boolean"}, "detail": {"type": "string"}}}}}}
    });
    if let (Value::Object(all), Value::Object(rest)) = (&mut first, rest) {
        all.extend(rest);
    }
    first
}
