//! `/v1/secrets`: a tenant's own secrets over the API, with its own token:
//! listed (names and fields, never values), set with
//! `PUT /v1/secrets/{name}` (the value in the JSON body, never in the path
//! or a query) and removed. The admin token gets 404 here as on every
//! tenant route: the operator manages any tenant's secrets with
//! `openclaw secrets`. Sealed and audited by the credential broker
//! (`src/broker/`).

use std::path::Path;

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::error::{json, ApiBody, ApiError};
use super::identity::ProxyUser;
use crate::audit::{Actor, Via};
use crate::broker::{BrokerError, SecretFields, TenantSecrets};
use crate::tenants::{Caller, TenantName};

/// `PUT /v1/secrets/{name}`'s body. No `Debug`: it holds the value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    value: String,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    placement: Vec<String>,
}

/// The shape named in a 400 for a body that is not one.
pub const PUT_SHAPE: &str =
    "{\"value\": \"...\", \"hosts\"?: [...], \"header\"?, \"format\"?, \"placement\"?: [...]}";

fn open(home: &Path, tenant: &TenantName, request_id: &str) -> Result<TenantSecrets, ApiError> {
    TenantSecrets::open(home, tenant).map_err(|e| ApiError::internal(request_id, &e))
}

fn broker_error(err: BrokerError, request_id: &str) -> ApiError {
    match err {
        BrokerError::BadName => ApiError::invalid("name", err.to_string()),
        // The enforcement's own message: it names the field at fault, never the value.
        BrokerError::Invalid(why) => ApiError::invalid("body", why),
        BrokerError::Unknown(_) => ApiError::not_found(),
        BrokerError::Tampered(_) | BrokerError::Failed(_) => {
            ApiError::internal(request_id, &anyhow::Error::from(err))
        }
    }
}

/// The tenant, or the user a trusted proxy named acting inside it (as a
/// session change is audited): who changed a credential is kept.
fn caller(request_id: &str, proxy_user: &ProxyUser) -> Caller {
    let user = match proxy_user {
        ProxyUser::User(name) => Some(name.clone()),
        _ => None,
    };
    Caller {
        actor: if user.is_some() {
            Actor::User
        } else {
            Actor::Tenant
        },
        via: Via::Api,
        request_id: request_id.to_owned(),
        user,
    }
}

/// `GET /v1/secrets`.
pub fn list(
    home: &Path,
    tenant: &TenantName,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let listed = open(home, tenant, request_id)?
        .list()
        .map_err(|e| broker_error(e, request_id))?;
    Ok(json(StatusCode::OK, &json!({ "secrets": listed })))
}

/// `PUT /v1/secrets/{name}`: stored (or replaced); one audit line.
pub fn put(
    home: &Path,
    tenant: &TenantName,
    name: &str,
    body: PutSecret,
    proxy_user: &ProxyUser,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let fields = SecretFields {
        hosts: body.hosts,
        header: body.header,
        format: body.format,
        placement: body.placement,
    };
    open(home, tenant, request_id)?
        .set(&caller(request_id, proxy_user), name, &body.value, &fields)
        .map_err(|e| broker_error(e, request_id))?;
    Ok(json(StatusCode::OK, &json!({"name": name, "stored": true})))
}

/// `DELETE /v1/secrets/{name}`: removed; 404 when there is none.
pub fn remove(
    home: &Path,
    tenant: &TenantName,
    name: &str,
    proxy_user: &ProxyUser,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    open(home, tenant, request_id)?
        .remove(&caller(request_id, proxy_user), name)
        .map_err(|e| broker_error(e, request_id))?;
    Ok(json(
        StatusCode::OK,
        &json!({"name": name, "removed": true}),
    ))
}
