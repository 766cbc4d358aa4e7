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
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::Caller;
use crate::error::Error;
use crate::registry::{Level, Registry, RegistryError, SchemaType, Version, Which};
use crate::service::{Operation, RequestCtx};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The documented routes (in the OpenAPI document under the tag `schema registry`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(subjects))
        .routes(routes!(lookup, delete_subject))
        .routes(routes!(versions, register))
        .routes(routes!(version, delete_version))
        .routes(routes!(version_schema))
        .routes(routes!(types))
        .routes(routes!(schema_by_id))
        .routes(routes!(raw_schema_by_id))
        .routes(routes!(id_versions))
        .routes(routes!(id_subjects))
        .routes(routes!(global_config, set_global_config))
        .routes(routes!(subject_config, set_subject_config, delete_subject_config))
        .routes(routes!(check_version))
        .routes(routes!(check_all))
}

/// What Confluent's clients call that is not worth documenting: the root, and the
/// data-contract associations their serializers ask for first.
pub fn undocumented() -> Router<AppState> {
    Router::new()
        .route("/registry", get(root))
        .route("/registry/", get(root))
        .route("/registry/associations/resources/{namespace}/{resource}", get(associations))
}

/// Confluent's error body.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RegistryFailure {
    /// Confluent's code: 40401 subject not found, 40402 version not found, 40403 schema not
    /// found, 40404/40406 soft-deleted, 40405/40407 not soft-deleted first, 40408 no subject
    /// level, 409 incompatible, 42201 invalid schema, 42202 invalid version, 42203 invalid
    /// level, 50001 store failure; gregor's own refusals are their status followed by 01
    /// (40101 unauthenticated, 40301 forbidden, 42901 over quota, 50101 not supported).
    error_code: u32,
    message: String,
}

/// A schema to register, look up or check.
#[derive(Debug, ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct SchemaRequest {
    /// The schema's text (Avro JSON, or a JSON Schema document).
    schema: String,
    /// `AVRO` (the default) or `JSON`.
    schemaType: Option<String>,
    /// Schema references: not supported yet (an error when not empty).
    references: Option<Vec<Value>>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SchemaId {
    id: u32,
}

/// A version of a subject.
#[derive(Debug, ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct SubjectVersion {
    subject: String,
    version: u32,
    id: u32,
    /// Absent for AVRO.
    schemaType: Option<String>,
    schema: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct SchemaText {
    schema: String,
    /// Absent for AVRO.
    schemaType: Option<String>,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SubjectVersionRef {
    subject: String,
    version: u32,
}

/// NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or FULL_TRANSITIVE.
#[derive(Debug, ToSchema)]
#[allow(dead_code, non_snake_case)]
pub struct CompatibilityLevel {
    compatibilityLevel: String,
}

/// NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or FULL_TRANSITIVE.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CompatibilityUpdate {
    compatibility: String,
}

#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CompatibilityResult {
    is_compatible: bool,
    /// Why not (with `verbose=true`).
    messages: Option<Vec<String>>,
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

/// List the subjects (those the principal may read).
#[utoipa::path(
    get,
    path = "/registry/subjects",
    tag = "schema registry",
    params(("deleted" = Option<bool>, Query, description = "Include soft-deleted ones"), ("subjectPrefix" = Option<String>, Query, description = "Only subjects starting with this")),
    responses(
        (status = 200, description = "Subject names", body = Vec<String>, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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

/// Register a schema under a subject (or find it there): its global id. Checked against the subject's compatibility level.
#[utoipa::path(
    post,
    path = "/registry/subjects/{subject}/versions",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs"), ("normalize" = Option<bool>, Query, description = "Accepted; schemas are compared in canonical form anyway")),
    request_body(content = SchemaRequest, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "The schema's global id", body = SchemaId, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 409, description = "Incompatible with earlier versions (409)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 422, description = "Invalid schema (42201)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn register(State(state): State<AppState>, Who(ctx): Who, Path(subject): Path<String>, body: Bytes) -> Answer {
    let reg = registry(&state, &ctx, Operation::RegisterSchema(&subject))?;
    let (kind, text) = SchemaBody::parse(&body)?;
    let id = reg.register(&subject, kind, &text).await?;
    Ok(ok(StatusCode::OK, json!({"id": id})))
}

/// Look a schema up in a subject: the version that holds it.
#[utoipa::path(
    post,
    path = "/registry/subjects/{subject}",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs")),
    request_body(content = SchemaRequest, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "The version holding the schema", body = SubjectVersion, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Subject (40401) or schema (40403) not found", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 422, description = "Invalid schema (42201)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn lookup(State(state): State<AppState>, Who(ctx): Who, Path(subject): Path<String>, body: Bytes) -> Answer {
    let reg = registry(&state, &ctx, Operation::ReadSubject(&subject))?;
    let (kind, text) = SchemaBody::parse(&body)?;
    Ok(ok(StatusCode::OK, version_json(&reg.lookup(&subject, kind, &text)?)))
}

/// List a subject's versions.
#[utoipa::path(
    get,
    path = "/registry/subjects/{subject}/versions",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs"), ("deleted" = Option<bool>, Query, description = "Include soft-deleted ones")),
    responses(
        (status = 200, description = "Version numbers", body = Vec<u32>, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Subject not found (40401)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn versions(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::ReadSubject(&subject))?;
    Ok(ok(StatusCode::OK, json!(reg.versions(&subject, flag(&q, "deleted"))?)))
}

/// Get a version of a subject.
#[utoipa::path(
    get,
    path = "/registry/subjects/{subject}/versions/{version}",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs"), ("version" = String, Path, description = "A version number (1, 2, …), or `latest` / `-1`"), ("deleted" = Option<bool>, Query, description = "Include soft-deleted ones")),
    responses(
        (status = 200, description = "The version", body = SubjectVersion, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Subject (40401) or version (40402) not found", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 422, description = "Invalid version (42202)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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

/// Get a version's schema text alone.
#[utoipa::path(
    get,
    path = "/registry/subjects/{subject}/versions/{version}/schema",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs"), ("version" = String, Path, description = "A version number (1, 2, …), or `latest` / `-1`"), ("deleted" = Option<bool>, Query, description = "Include soft-deleted ones")),
    responses(
        (status = 200, description = "The schema itself", body = Object, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Subject (40401) or version (40402) not found", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 422, description = "Invalid version (42202)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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

/// Delete a subject: softly, or (once soft-deleted) with `permanent=true`. The versions deleted.
#[utoipa::path(
    delete,
    path = "/registry/subjects/{subject}",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs"), ("permanent" = Option<bool>, Query, description = "Delete for good (soft-delete first)")),
    responses(
        (status = 200, description = "The versions deleted", body = Vec<u32>, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Subject not found (40401), soft-deleted already (40404), or not soft-deleted before a permanent delete (40405)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn delete_subject(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::AlterSubject(&subject))?;
    Ok(ok(StatusCode::OK, json!(reg.delete_subject(&subject, flag(&q, "permanent")).await?)))
}

/// Delete a version: softly, or (once soft-deleted) with `permanent=true`.
#[utoipa::path(
    delete,
    path = "/registry/subjects/{subject}/versions/{version}",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs"), ("version" = String, Path, description = "A version number (1, 2, …), or `latest` / `-1`"), ("permanent" = Option<bool>, Query, description = "Delete for good (soft-delete first)")),
    responses(
        (status = 200, description = "The version deleted", body = u32, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Subject (40401) or version (40402) not found, soft-deleted already (40406), or not soft-deleted before a permanent delete (40407)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 422, description = "Invalid version (42202)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn delete_version(
    State(state): State<AppState>,
    Who(ctx): Who,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let reg = registry(&state, &ctx, Operation::AlterSubject(&subject))?;
    Ok(ok(StatusCode::OK, json!(reg.delete_version(&subject, which(&version)?, flag(&q, "permanent")).await?)))
}

/// The schema types this registry accepts.
#[utoipa::path(
    get,
    path = "/registry/schemas/types",
    tag = "schema registry",
    responses(
        (status = 200, description = "AVRO and JSON", body = Vec<String>, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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

/// Get a schema by its global id.
#[utoipa::path(
    get,
    path = "/registry/schemas/ids/{id}",
    tag = "schema registry",
    params(("id" = u32, Path, description = "Global schema id")),
    responses(
        (status = 200, description = "The schema", body = SchemaText, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Schema not found (40403)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn schema_by_id(State(state): State<AppState>, Who(ctx): Who, Path(id): Path<String>) -> Answer {
    let (kind, text) = readable_schema(&state, &ctx, schema_id(&id)?)?;
    let mut out = json!({"schema": text});
    if kind != SchemaType::Avro {
        out["schemaType"] = json!(kind.as_str());
    }
    Ok(ok(StatusCode::OK, out))
}

/// Get a schema's text alone by its global id.
#[utoipa::path(
    get,
    path = "/registry/schemas/ids/{id}/schema",
    tag = "schema registry",
    params(("id" = u32, Path, description = "Global schema id")),
    responses(
        (status = 200, description = "The schema itself", body = Object, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Schema not found (40403)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn raw_schema_by_id(State(state): State<AppState>, Who(ctx): Who, Path(id): Path<String>) -> Answer {
    let (_, text) = readable_schema(&state, &ctx, schema_id(&id)?)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

fn usages(state: &AppState, ctx: &RequestCtx, id: &str) -> Result<Vec<(String, u32)>, Failure> {
    let id = schema_id(id)?;
    let reg = state.service.registry()?;
    Ok(reg.usages(id)?.into_iter().filter(|(s, _)| state.service.may(ctx, Operation::ReadSubject(s))).collect())
}

/// The subject versions that use a schema.
#[utoipa::path(
    get,
    path = "/registry/schemas/ids/{id}/versions",
    tag = "schema registry",
    params(("id" = u32, Path, description = "Global schema id")),
    responses(
        (status = 200, description = "Subject and version pairs", body = Vec<SubjectVersionRef>, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Schema not found (40403)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn id_versions(State(state): State<AppState>, Who(ctx): Who, Path(id): Path<String>) -> Answer {
    let list: Vec<Value> =
        usages(&state, &ctx, &id)?.into_iter().map(|(s, v)| json!({"subject": s, "version": v})).collect();
    Ok(ok(StatusCode::OK, json!(list)))
}

/// The subjects that use a schema.
#[utoipa::path(
    get,
    path = "/registry/schemas/ids/{id}/subjects",
    tag = "schema registry",
    params(("id" = u32, Path, description = "Global schema id")),
    responses(
        (status = 200, description = "Subject names", body = Vec<String>, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Schema not found (40403)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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

/// The global compatibility level (default BACKWARD).
#[utoipa::path(
    get,
    path = "/registry/config",
    tag = "schema registry",
    responses(
        (status = 200, description = "The level", body = CompatibilityLevel, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn global_config(State(state): State<AppState>, Who(ctx): Who) -> Answer {
    let reg = registry(&state, &ctx, Operation::DescribeCluster)?;
    Ok(ok(StatusCode::OK, json!({"compatibilityLevel": reg.level(None, true)?.as_str()})))
}

/// Set the global compatibility level.
#[utoipa::path(
    put,
    path = "/registry/config",
    tag = "schema registry",
    request_body(content = CompatibilityUpdate, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "The level set", body = CompatibilityUpdate, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 422, description = "Invalid compatibility level (42203)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
async fn set_global_config(State(state): State<AppState>, Who(ctx): Who, body: Bytes) -> Answer {
    let reg = registry(&state, &ctx, Operation::AlterCluster)?;
    let level = level_of(&body)?;
    reg.set_level(None, Some(level)).await?;
    Ok(ok(StatusCode::OK, json!({"compatibility": level.as_str()})))
}

/// A subject's compatibility level.
#[utoipa::path(
    get,
    path = "/registry/config/{subject}",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs"), ("defaultToGlobal" = Option<bool>, Query, description = "Answer the global level when the subject has none")),
    responses(
        (status = 200, description = "The level", body = CompatibilityLevel, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "The subject has no level of its own (40408)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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

/// Set a subject's compatibility level.
#[utoipa::path(
    put,
    path = "/registry/config/{subject}",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs")),
    request_body(content = CompatibilityUpdate, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "The level set", body = CompatibilityUpdate, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 422, description = "Invalid compatibility level (42203)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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

/// Remove a subject's own level (the global one applies again).
#[utoipa::path(
    delete,
    path = "/registry/config/{subject}",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs")),
    responses(
        (status = 200, description = "The level removed", body = CompatibilityLevel, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Subject not found (40401)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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

/// Test a schema's compatibility with one version, by the subject's level.
#[utoipa::path(
    post,
    path = "/registry/compatibility/subjects/{subject}/versions/{version}",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs"), ("version" = String, Path, description = "A version number (1, 2, …), or `latest` / `-1`"), ("verbose" = Option<bool>, Query, description = "Say why not")),
    request_body(content = SchemaRequest, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "Whether it is compatible", body = CompatibilityResult, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Subject (40401) or version (40402) not found", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 422, description = "Invalid schema (42201)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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

/// Test a schema's compatibility with the versions the subject's level compares against.
#[utoipa::path(
    post,
    path = "/registry/compatibility/subjects/{subject}/versions",
    tag = "schema registry",
    params(("subject" = String, Path, description = "Subject name; `<topic>-value` and `<topic>-key` follow the topic's ACLs"), ("verbose" = Option<bool>, Query, description = "Say why not")),
    request_body(content = SchemaRequest, content_type = "application/vnd.schemaregistry.v1+json"),
    responses(
        (status = 200, description = "Whether it is compatible", body = CompatibilityResult, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 422, description = "Invalid schema (42201)", body = RegistryFailure, content_type = "application/vnd.schemaregistry.v1+json"),
    )
)]
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
