//! The Schema Registry's HTTP API under `/registry`, compatible with Confluent's (so that
//! `url = http://HOST:PORT/registry` works for Confluent's clients): its paths, its JSON
//! field names, its `application/vnd.schemaregistry.v1+json` answers and its errors
//! (`{"error_code": 40401, "message": …}`).

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::Caller;
use crate::error::Error;
use crate::registry::{Level, Registry, RegistryError, SchemaType, Version, Which};
use crate::service::{Operation, RequestCtx};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/registry", get(root))
        .route("/registry/", get(root))
        .route("/registry/subjects", get(subjects))
        .route("/registry/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/registry/subjects/{subject}/versions", get(versions).post(register))
        .route("/registry/subjects/{subject}/versions/{version}", get(version).delete(delete_version))
        .route("/registry/subjects/{subject}/versions/{version}/schema", get(version_schema))
        .route("/registry/schemas/types", get(types))
        .route("/registry/schemas/ids/{id}", get(schema_by_id))
        .route("/registry/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/registry/schemas/ids/{id}/versions", get(id_versions))
        .route("/registry/schemas/ids/{id}/subjects", get(id_subjects))
        .route("/registry/config", get(global_config).put(set_global_config))
        .route("/registry/config/{subject}", get(subject_config).put(set_subject_config).delete(delete_subject_config))
        .route("/registry/compatibility/subjects/{subject}/versions/{version}", post(check_version))
        .route("/registry/compatibility/subjects/{subject}/versions", post(check_all))
        .route("/registry/associations/resources/{namespace}/{resource}", get(associations))
}

/// An answer in Confluent's media type.
fn ok(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
}

/// A failure as Confluent's clients read it.
pub struct Failure(u16, u32, String);

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Failure {
        if let RegistryError::Store(why) = &e {
            tracing::error!(error = %why, "schema registry store failure");
        }
        Failure(e.status(), e.code(), e.to_string())
    }
}

impl From<Error> for Failure {
    /// gregor's own refusals (credentials, permissions, quotas, `not_supported`) in Confluent's
    /// body: its status, and an `error_code` of the status followed by 01 (Confluent's 40101,
    /// 40301, …). Server faults are logged, not shown.
    fn from(e: Error) -> Failure {
        let status = e.code().describe().status;
        if e.code().is_server_fault() {
            tracing::error!(error = %e, "schema registry request failed");
        }
        Failure(status, u32::from(status) * 100 + 1, e.public_detail())
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        match e {
            ApiError::Core(e) => e.into(),
            other => {
                let status = other.code().describe().status;
                Failure(status, u32::from(status) * 100 + 1, other.to_string())
            }
        }
    }
}

/// The request's caller ([`Caller`]), refused in Confluent's body.
pub struct Who(RequestCtx);

impl FromRequestParts<AppState> for Who {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Who, Failure> {
        Ok(Who(Caller::from_request_parts(parts, state).await?.0))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ok(status, json!({"error_code": self.1, "message": self.2}))
    }
}

type Answer = Result<Response, Failure>;

/// Query flags as Confluent's clients send them (`normalize=False`, `deleted=true`).
fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn registry<'a>(state: &'a AppState, ctx: &RequestCtx, op: Operation<'_>) -> Result<&'a Registry, Failure> {
    Ok(state.service.registry_for(ctx, op)?.as_ref())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

impl SchemaBody {
    fn parse(body: &[u8]) -> Result<(SchemaType, String), Failure> {
        let b: SchemaBody =
            serde_json::from_slice(body).map_err(|e| Failure(422, 42201, format!("Invalid schema: {e}")))?;
        if !b.references.is_empty() {
            return Err(Failure(422, 42201, "Invalid schema: schema references are not supported yet".into()));
        }
        let kind = match b.schema_type.as_deref() {
            None => SchemaType::Avro,
            Some(t) => t.parse().map_err(|e: crate::registry::SchemaError| Failure(422, 42201, e.to_string()))?,
        };
        Ok((kind, b.schema))
    }
}

fn version_json(v: &Version) -> Value {
    let mut out = json!({"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema});
    if v.kind != SchemaType::Avro {
        out["schemaType"] = json!(v.kind.as_str());
    }
    out
}

fn which(version: &str) -> Result<Which, Failure> {
    Ok(version.parse::<Which>()?)
}

async fn root() -> Response {
    ok(StatusCode::OK, json!({}))
}

async fn subjects(State(state): State<AppState>, Who(ctx): Who, Query(q): Query<HashMap<String, String>>) -> Answer {
    let reg = state.service.registry()?;
    let prefix = q.get("subjectPrefix").map(String::as_str).unwrap_or("");
    let listed: Vec<String> = reg
        .subjects(flag(&q, "deleted"))
        .into_iter()
        .filter(|s| s.starts_with(prefix) && state.service.may(&ctx, Operation::ReadSubject(s)))
        .collect();
    Ok(ok(StatusCode::OK, json!(listed)))
}

async fn register(State(state): State<AppState>, Who(ctx): Who, Path(subject): Path<String>, body: Bytes) -> Answer {
    let reg = registry(&state, &ctx, Operation::RegisterSchema(&subject))?;
    let (kind, text) = SchemaBody::parse(&body)?;
    let id = reg.register(&subject, kind, &text).await?;
    Ok(ok(StatusCode::OK, json!({"id": id})))
}

async fn lookup(State(state): State<AppState>, Who(ctx): Who, Path(subject): Path<String>, body: Bytes) -> Answer {
    let reg = registry(&state, &ctx, Operation::ReadSubject(&subject))?;
    let (kind, text) = SchemaBody::parse(&body)?;
    Ok(ok(StatusCode::OK, version_json(&reg.lookup(&subject, kind, &text)?)))
}

async fn versions(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::ReadSubject(&subject))?;
    Ok(ok(StatusCode::OK, json!(reg.versions(&subject, flag(&q, "deleted"))?)))
}

async fn version(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::ReadSubject(&subject))?;
    let v = reg.version(&subject, which(&version)?, flag(&q, "deleted"))?;
    Ok(ok(StatusCode::OK, version_json(&v)))
}

async fn version_schema(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::ReadSubject(&subject))?;
    let v = reg.version(&subject, which(&version)?, flag(&q, "deleted"))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], v.schema).into_response())
}

async fn delete_subject(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::AlterSubject(&subject))?;
    Ok(ok(StatusCode::OK, json!(reg.delete_subject(&subject, flag(&q, "permanent")).await?)))
}

async fn delete_version(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::AlterSubject(&subject))?;
    Ok(ok(StatusCode::OK, json!(reg.delete_version(&subject, which(&version)?, flag(&q, "permanent")).await?)))
}

async fn types() -> Response {
    ok(StatusCode::OK, json!(["JSON", "AVRO"]))
}

fn schema_id(id: &str) -> Result<u32, Failure> {
    id.parse().map_err(|_| Failure::from(RegistryError::SchemaNotFound))
}

/// A schema by id: readable by whoever may read a subject using it, or describe the cluster.
fn readable_schema(state: &AppState, ctx: &RequestCtx, id: u32) -> Result<(SchemaType, String), Failure> {
    let reg = state.service.registry()?;
    let (kind, text) = reg.schema(id)?;
    let may = state.service.may(ctx, Operation::DescribeCluster)
        || reg.usages(id)?.iter().any(|(s, _)| state.service.may(ctx, Operation::ReadSubject(s)));
    if !may {
        return Err(Failure(403, 40301, format!("the principal may read no subject that uses schema {id}")));
    }
    Ok((kind, text))
}

async fn schema_by_id(State(state): State<AppState>, Who(ctx): Who, Path(id): Path<String>) -> Answer {
    let (kind, text) = readable_schema(&state, &ctx, schema_id(&id)?)?;
    let mut out = json!({"schema": text});
    if kind != SchemaType::Avro {
        out["schemaType"] = json!(kind.as_str());
    }
    Ok(ok(StatusCode::OK, out))
}

async fn raw_schema_by_id(State(state): State<AppState>, Who(ctx): Who, Path(id): Path<String>) -> Answer {
    let (_, text) = readable_schema(&state, &ctx, schema_id(&id)?)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

fn usages(state: &AppState, ctx: &RequestCtx, id: &str) -> Result<Vec<(String, u32)>, Failure> {
    let id = schema_id(id)?;
    let reg = state.service.registry()?;
    Ok(reg.usages(id)?.into_iter().filter(|(s, _)| state.service.may(ctx, Operation::ReadSubject(s))).collect())
}

async fn id_versions(State(state): State<AppState>, Who(ctx): Who, Path(id): Path<String>) -> Answer {
    let list: Vec<Value> =
        usages(&state, &ctx, &id)?.into_iter().map(|(s, v)| json!({"subject": s, "version": v})).collect();
    Ok(ok(StatusCode::OK, json!(list)))
}

async fn id_subjects(State(state): State<AppState>, Who(ctx): Who, Path(id): Path<String>) -> Answer {
    let mut list: Vec<String> = usages(&state, &ctx, &id)?.into_iter().map(|(s, _)| s).collect();
    list.dedup();
    Ok(ok(StatusCode::OK, json!(list)))
}

#[derive(Debug, Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn level_of(body: &[u8]) -> Result<Level, Failure> {
    let b: ConfigBody =
        serde_json::from_slice(body).map_err(|e| Failure(422, 42203, format!("Invalid compatibility level: {e}")))?;
    b.compatibility
        .parse()
        .map_err(|_| Failure(422, 42203, format!("Invalid compatibility level: {}", b.compatibility)))
}

async fn global_config(State(state): State<AppState>, Who(ctx): Who) -> Answer {
    let reg = registry(&state, &ctx, Operation::DescribeCluster)?;
    Ok(ok(StatusCode::OK, json!({"compatibilityLevel": reg.level(None, true)?.as_str()})))
}

async fn set_global_config(State(state): State<AppState>, Who(ctx): Who, body: Bytes) -> Answer {
    let reg = registry(&state, &ctx, Operation::AlterCluster)?;
    let level = level_of(&body)?;
    reg.set_level(None, Some(level)).await?;
    Ok(ok(StatusCode::OK, json!({"compatibility": level.as_str()})))
}

async fn subject_config(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::ReadSubject(&subject))?;
    let level = reg.level(Some(&subject), flag(&q, "defaultToGlobal"))?;
    Ok(ok(StatusCode::OK, json!({"compatibilityLevel": level.as_str()})))
}

async fn set_subject_config(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path(subject): Path<String>,
    body: Bytes,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::AlterSubject(&subject))?;
    let level = level_of(&body)?;
    reg.set_level(Some(&subject), Some(level)).await?;
    Ok(ok(StatusCode::OK, json!({"compatibility": level.as_str()})))
}

async fn delete_subject_config(State(state): State<AppState>, Who(ctx): Who, Path(subject): Path<String>) -> Answer {
    let reg = registry(&state, &ctx, Operation::AlterSubject(&subject))?;
    let previous = reg.set_level(Some(&subject), None).await?.unwrap_or_default();
    Ok(ok(StatusCode::OK, json!({"compatibilityLevel": previous.as_str()})))
}

fn compatibility(reasons: Vec<String>, q: &HashMap<String, String>) -> Response {
    let mut out = json!({"is_compatible": reasons.is_empty()});
    if flag(q, "verbose") {
        out["messages"] = json!(reasons);
    }
    ok(StatusCode::OK, out)
}

async fn check_version(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::ReadSubject(&subject))?;
    let (kind, text) = SchemaBody::parse(&body)?;
    Ok(compatibility(reg.check(&subject, Some(which(&version)?), kind, &text)?, &q))
}

async fn check_all(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::ReadSubject(&subject))?;
    let (kind, text) = SchemaBody::parse(&body)?;
    Ok(compatibility(reg.check(&subject, None, kind, &text)?, &q))
}

/// Confluent's data-contract associations: none here, so serializers fall back to
/// `<topic>-value` (TopicNameStrategy), as they do on a 404.
async fn associations(Path((_, resource)): Path<(String, String)>) -> Failure {
    Failure(404, 40401, format!("no association for resource '{resource}'"))
}
