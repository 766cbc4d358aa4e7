//! The registry's subjects, versions, schemas and configuration: all of it in memory (a
//! registry holds thousands of schemas, not millions), every change written durably first.
//!
//! Durable layout (the embedded store's `meta` family; on the Kafka backend the same entries
//! are the records of the cluster's `_schemas` topic, keyed alike, deletes as tombstones):
//! - `g/s/<id u32>` → `{"type", "schema"}`: a schema by its global id, kept for good (ids are
//!   never reused, so an id in a stored record always means one schema);
//! - `g/v/<subject>\0<version u32>` → `{"id", "deleted"}`: a subject's version (soft-deleted
//!   versions stay until deleted permanently);
//! - `g/c/<subject>` → a compatibility level (`g/c/` alone: the global one);
//! - `g/t/<topic>` → `{"key", "value"}`: which parts of a topic's records must match a schema,
//!   on the Kafka backend (whose cluster has no such topic config; the embedded store keeps
//!   them in the topic's own configuration).
//!
//! Writes are serialised by one lock and written (synced) before memory changes, so what a
//! client was answered survives a crash, and a failed write changes nothing. On the cluster,
//! every replica follows `_schemas` into its memory ([`Registry::apply_logged`]); a write
//! first catches up with the log's end, appends, and waits until its follower applied it.
//! Two replicas choosing one id or version at once are settled by the log's order: the first
//! entry wins, and the registration that lost decides again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::compat::Level;
use super::schema::{ParsedSchema, SchemaType};

/// Where the registry's entries live.
pub trait Backing: Send + Sync + 'static {
    /// Every entry (keys under `g/`).
    fn load(&self) -> crate::error::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Puts and deletes entries at once, durably.
    fn write(&self, changes: &[(Vec<u8>, Option<Vec<u8>>)]) -> crate::error::Result<()>;
}

const PREFIX: &[u8] = b"g/";

impl Backing for crate::store::Store {
    fn load(&self) -> crate::error::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_meta(PREFIX)
    }

    fn write(&self, changes: &[(Vec<u8>, Option<Vec<u8>>)]) -> crate::error::Result<()> {
        self.write_meta(changes)
    }
}

/// Confluent's errors, with its codes (the HTTP status is the code's first three digits).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema not found")]
    SchemaNotFound,
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error("Version {0} was soft deleted. Set permanent=true to delete permanently")]
    VersionSoftDeleted(u32),
    #[error("Version {0} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(u32),
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error("Invalid compatibility level: {0}")]
    InvalidLevel(String),
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: {details:?}"
    )]
    Incompatible { subject: String, details: Vec<String> },
    #[error("Error in the backend data store: {0}")]
    Store(String),
}

impl RegistryError {
    /// Confluent's `error_code`.
    pub fn code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound(_) => 40402,
            RegistryError::SchemaNotFound => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionSoftDeleted(_) => 40406,
            RegistryError::VersionNotSoftDeleted(_) => 40407,
            RegistryError::SubjectConfigNotFound(_) => 40408,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema(_) => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidLevel(_) => 42203,
            RegistryError::Store(_) => 50001,
        }
    }

    /// The HTTP status Confluent answers with.
    pub fn status(&self) -> u16 {
        match self.code() {
            409 => 409,
            c => (c / 100) as u16,
        }
    }
}

impl From<crate::error::Error> for RegistryError {
    fn from(e: crate::error::Error) -> RegistryError {
        RegistryError::Store(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, RegistryError>;

#[derive(Debug, Serialize, Deserialize)]
struct SchemaEntry {
    #[serde(rename = "type")]
    kind: SchemaType,
    schema: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct VersionEntry {
    id: u32,
    deleted: bool,
}

#[derive(Debug)]
struct Stored {
    text: String,
    parsed: Arc<ParsedSchema>,
}

#[derive(Debug, Default)]
struct State {
    schemas: BTreeMap<u32, Stored>,
    by_canonical: HashMap<(SchemaType, String), u32>,
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    /// By subject; `""` is the global level.
    levels: HashMap<String, Level>,
    /// Topics whose keys or values must match a schema (Kafka backend).
    topics: HashMap<String, TopicValidation>,
}

/// Which parts of a topic's records are validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicValidation {
    pub key: bool,
    pub value: bool,
}

/// A version of a subject, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub kind: SchemaType,
    pub schema: String,
}

/// Which version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Latest,
    Number(u32),
}

impl std::str::FromStr for Which {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Which> {
        if s == "latest" || s == "-1" {
            return Ok(Which::Latest);
        }
        match s.parse::<u32>() {
            Ok(v) if (1..=i32::MAX as u32).contains(&v) => Ok(Which::Number(v)),
            _ => Err(RegistryError::InvalidVersion(s.to_owned())),
        }
    }
}

/// The registry.
pub struct Registry {
    durable: Durable,
    state: parking_lot::RwLock<State>,
    /// This replica's writes, one at a time.
    writes: tokio::sync::Mutex<()>,
    /// On the cluster: the offset of `_schemas` applied up to (`None` before the first read).
    applied: tokio::sync::watch::Sender<Option<u64>>,
}

/// Where the entries are written.
enum Durable {
    /// The embedded store: this process is the only writer.
    Store(Arc<dyn Backing>),
    /// The cluster's `_schemas` topic, shared by every replica.
    Cluster(Arc<crate::cluster::Cluster>),
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("schemas", &self.state.read().schemas.len()).finish_non_exhaustive()
    }
}

fn schema_key(id: u32) -> Vec<u8> {
    [b"g/s/".as_slice(), &id.to_be_bytes()].concat()
}

fn version_key(subject: &str, version: u32) -> Vec<u8> {
    [b"g/v/".as_slice(), subject.as_bytes(), &[0], &version.to_be_bytes()].concat()
}

fn topic_key(topic: &str) -> Vec<u8> {
    [b"g/t/".as_slice(), topic.as_bytes()].concat()
}

fn level_key(subject: &str) -> Vec<u8> {
    [b"g/c/".as_slice(), subject.as_bytes()].concat()
}

fn corrupt(what: &str) -> crate::error::Error {
    crate::error::Error::Corrupt(format!("schema registry entry: {what}"))
}

impl Registry {
    /// Reads every entry from `backing` (blocking: call at start-up, off the runtime).
    pub fn open(backing: Arc<dyn Backing>) -> crate::error::Result<Registry> {
        let mut state = State::default();
        for (key, value) in backing.load()? {
            apply(&mut state, &key, Some(&value))?;
        }
        Ok(Registry::with(Durable::Store(backing), state))
    }

    fn with(durable: Durable, state: State) -> Registry {
        Registry {
            durable,
            state: parking_lot::RwLock::new(state),
            writes: tokio::sync::Mutex::new(()),
            applied: tokio::sync::watch::channel(None).0,
        }
    }

    /// A registry kept in the cluster's `_schemas` topic: empty until [`Registry::follow`]
    /// (which the caller spawns) has read the topic.
    pub fn in_cluster(cluster: Arc<crate::cluster::Cluster>) -> Registry {
        Registry::with(Durable::Cluster(cluster), State::default())
    }

    /// Applies an entry another writer (or this one) appended to the shared log, then says
    /// the log is applied up to `next` (the offset after it).
    pub fn apply_logged(&self, key: &[u8], value: Option<&[u8]>, next: u64) {
        if let Err(e) = apply(&mut self.state.write(), key, value) {
            tracing::error!(error = %e, "a _schemas entry does not decode; skipped");
        }
        self.applied.send_replace(Some(next));
    }

    /// Says the shared log is applied up to `next` (its end, when nothing was in it).
    pub fn applied_to(&self, next: u64) {
        self.applied.send_if_modified(|a| {
            let newer = a.is_none_or(|a| a < next);
            if newer {
                *a = Some(next);
            }
            newer
        });
    }

    /// Waits until the shared log is applied up to `end` (bounded by `within`).
    async fn applied_through(&self, end: u64, within: std::time::Duration) -> Result<()> {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|a| a.is_some_and(|a| a >= end))).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(RegistryError::Store(format!("the _schemas topic was not read up to offset {end} in time"))),
        }
    }

    /// Before a write on the cluster: everything appended so far is applied, so the write
    /// decides on the latest state.
    async fn catch_up(&self) -> Result<()> {
        let Durable::Cluster(cluster) = &self.durable else { return Ok(()) };
        let end = crate::cluster::schemas::end(cluster).await.map_err(RegistryError::from)?;
        self.applied_through(end, cluster.request_timeout()).await
    }

    /// Writes `changes` durably and applies them: to the store then memory, or to the
    /// cluster's log, then waits until the log's follower applied them (with whatever
    /// other replicas wrote before them: the first writer of an id or a version wins).
    async fn commit(&self, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        match &self.durable {
            Durable::Store(backing) => {
                let backing = backing.clone();
                let changes = tokio::task::spawn_blocking(move || backing.write(&changes).map(|()| changes))
                    .await
                    .map_err(|e| RegistryError::Store(format!("the store's writer task failed: {e}")))?
                    .map_err(RegistryError::from)?;
                let mut state = self.state.write();
                for (key, value) in &changes {
                    apply(&mut state, key, value.as_deref()).map_err(RegistryError::from)?;
                }
                Ok(())
            }
            Durable::Cluster(cluster) => {
                let last = crate::cluster::schemas::append(cluster, &changes).await.map_err(RegistryError::from)?;
                self.applied_through(last + 1, cluster.request_timeout()).await
            }
        }
    }

    /// Registers `text` under `subject` (or finds it there): its global id.
    pub async fn register(&self, subject: &str, kind: SchemaType, text: &str) -> Result<u32> {
        let parsed = ParsedSchema::parse(kind, text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
        let _writing = self.writes.lock().await;
        // On the cluster another replica may take the id or version this one chose: the first
        // written wins, and the loser decides again on what it lost to.
        for _ in 0..8 {
            self.catch_up().await?;
            let (changes, id, version) = match self.decide_registration(subject, kind, text, &parsed)? {
                Decided::Found(id) => return Ok(id),
                Decided::Write { changes, id, version } => (changes, id, version),
            };
            self.commit(changes).await?;
            let state = self.state.read();
            let won = state.subjects.get(subject).and_then(|vs| vs.get(&version)).is_some_and(|e| e.id == id)
                && state
                    .schemas
                    .get(&id)
                    .is_some_and(|s| s.parsed.kind == kind && s.parsed.canonical == parsed.canonical);
            if won {
                return Ok(id);
            }
        }
        Err(RegistryError::Store(format!("registering under {subject} kept conflicting with other replicas")))
    }

    fn decide_registration(
        &self,
        subject: &str,
        kind: SchemaType,
        text: &str,
        parsed: &ParsedSchema,
    ) -> Result<Decided> {
        {
            let state = self.state.read();
            let versions = state.subjects.get(subject);
            let live: Vec<(u32, u32)> =
                versions.into_iter().flatten().filter(|(_, e)| !e.deleted).map(|(v, e)| (*v, e.id)).collect();
            // Already there: the same answer, nothing written.
            if let Some((_, id)) = live.iter().find(|(_, id)| {
                state.schemas.get(id).is_some_and(|s| s.parsed.kind == kind && s.parsed.canonical == parsed.canonical)
            }) {
                return Ok(Decided::Found(*id));
            }
            let level = state.levels.get(subject).or_else(|| state.levels.get("")).copied().unwrap_or_default();
            let previous: Vec<&ParsedSchema> =
                live.iter().filter_map(|(_, id)| state.schemas.get(id)).map(|s| &*s.parsed).collect();
            let details = level.check(parsed, &previous);
            if !details.is_empty() {
                return Err(RegistryError::Incompatible { subject: subject.to_owned(), details });
            }
            let mut changes = Vec::new();
            let id = match state.by_canonical.get(&(kind, parsed.canonical.clone())) {
                Some(id) => *id,
                None => {
                    let id = state.schemas.keys().next_back().map_or(1, |last| last + 1);
                    let entry = SchemaEntry { kind, schema: text.to_owned() };
                    changes.push((schema_key(id), Some(to_json(&entry)?)));
                    id
                }
            };
            let version = versions.and_then(|v| v.keys().next_back()).map_or(1, |last| last + 1);
            changes.push((version_key(subject, version), Some(to_json(&VersionEntry { id, deleted: false })?)));
            Ok(Decided::Write { changes, id, version })
        }
    }

    /// The live version of `subject` holding `text`, if registered there.
    pub fn lookup(&self, subject: &str, kind: SchemaType, text: &str) -> Result<Version> {
        let parsed = ParsedSchema::parse(kind, text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
        let state = self.state.read();
        let versions = live_versions(&state, subject)?;
        versions
            .into_iter()
            .find(|(_, e)| {
                state
                    .schemas
                    .get(&e.id)
                    .is_some_and(|s| s.parsed.kind == kind && s.parsed.canonical == parsed.canonical)
            })
            .map(|(v, e)| version_of(&state, subject, v, e))
            .transpose()?
            .ok_or(RegistryError::SchemaNotFound)
    }

    /// Subjects with a live version (and, with `deleted`, soft-deleted ones too).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        let state = self.state.read();
        state
            .subjects
            .iter()
            .filter(|(_, vs)| vs.values().any(|e| deleted || !e.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// A subject's version numbers.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>> {
        let state = self.state.read();
        let all = state.subjects.get(subject).ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let out: Vec<u32> = all.iter().filter(|(_, e)| deleted || !e.deleted).map(|(v, _)| *v).collect();
        if out.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        Ok(out)
    }

    pub fn version(&self, subject: &str, which: Which, deleted: bool) -> Result<Version> {
        let state = self.state.read();
        let all = state.subjects.get(subject).ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let visible = |e: &VersionEntry| deleted || !e.deleted;
        if !all.values().any(visible) {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        let found = match which {
            Which::Latest => all.iter().rev().find(|(_, e)| visible(e)),
            Which::Number(n) => all.get_key_value(&n).filter(|(_, e)| visible(e)),
        };
        let (v, e) = found.ok_or_else(|| {
            RegistryError::VersionNotFound(match which {
                Which::Latest => "latest".into(),
                Which::Number(n) => n.to_string(),
            })
        })?;
        version_of(&state, subject, *v, *e)
    }

    /// A schema by its global id: (type, text).
    pub fn schema(&self, id: u32) -> Result<(SchemaType, String)> {
        let state = self.state.read();
        let s = state.schemas.get(&id).ok_or(RegistryError::SchemaNotFound)?;
        Ok((s.parsed.kind, s.text.clone()))
    }

    /// A schema by its global id, parsed (for validation).
    pub fn parsed(&self, id: u32) -> Result<Arc<ParsedSchema>> {
        self.state.read().schemas.get(&id).map(|s| s.parsed.clone()).ok_or(RegistryError::SchemaNotFound)
    }

    /// The schema values of `subject` are checked against: the one with global id `id` when
    /// given (it must be a live version of the subject), else the subject's latest live version.
    pub fn schema_for(&self, subject: &str, id: Option<u32>) -> Result<(u32, Arc<ParsedSchema>)> {
        let state = self.state.read();
        let versions = state
            .subjects
            .get(subject)
            .filter(|vs| vs.values().any(|e| !e.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let id = match id {
            Some(id) if versions.values().any(|e| e.id == id && !e.deleted) => id,
            Some(_) => return Err(RegistryError::SchemaNotFound),
            None => versions.values().rev().find(|e| !e.deleted).map(|e| e.id).ok_or(RegistryError::SchemaNotFound)?,
        };
        let schema = state.schemas.get(&id).ok_or(RegistryError::SchemaNotFound)?;
        Ok((id, schema.parsed.clone()))
    }

    /// The schema with global id `id` if it is (or was: soft-deleted versions count) a version
    /// of `subject`: what a reader decodes a value framed with `id` by.
    pub fn schema_of(&self, subject: &str, id: u32) -> Option<Arc<ParsedSchema>> {
        let state = self.state.read();
        state.subjects.get(subject).filter(|vs| vs.values().any(|e| e.id == id))?;
        state.schemas.get(&id).map(|s| s.parsed.clone())
    }

    /// Where a schema id is used: (subject, version), live versions only.
    pub fn usages(&self, id: u32) -> Result<Vec<(String, u32)>> {
        let state = self.state.read();
        if !state.schemas.contains_key(&id) {
            return Err(RegistryError::SchemaNotFound);
        }
        Ok(state
            .subjects
            .iter()
            .flat_map(|(s, vs)| vs.iter().filter(|(_, e)| e.id == id && !e.deleted).map(move |(v, _)| (s.clone(), *v)))
            .collect())
    }

    /// Deletes a subject: softly (its versions are hidden, numbering continues), or, once
    /// soft-deleted, permanently. The versions deleted.
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<u32>> {
        let _writing = self.writes.lock().await;
        self.catch_up().await?;
        let (changes, versions) = {
            let state = self.state.read();
            let all = state.subjects.get(subject).ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
            let live: Vec<u32> = all.iter().filter(|(_, e)| !e.deleted).map(|(v, _)| *v).collect();
            let mut changes = Vec::new();
            if permanent {
                if !live.is_empty() {
                    return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
                }
                for v in all.keys() {
                    changes.push((version_key(subject, *v), None));
                }
                if state.levels.contains_key(subject) {
                    changes.push((level_key(subject), None));
                }
                (changes, all.keys().copied().collect::<Vec<_>>())
            } else {
                if live.is_empty() {
                    return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
                }
                for v in &live {
                    let e = VersionEntry { id: all[v].id, deleted: true };
                    changes.push((version_key(subject, *v), Some(to_json(&e)?)));
                }
                (changes, live)
            }
        };
        self.commit(changes).await?;
        Ok(versions)
    }

    /// Deletes one version, softly or (once soft-deleted) permanently: its number.
    pub async fn delete_version(&self, subject: &str, which: Which, permanent: bool) -> Result<u32> {
        let _writing = self.writes.lock().await;
        self.catch_up().await?;
        let (change, version) = {
            let state = self.state.read();
            let all = state.subjects.get(subject).ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
            let found = match which {
                Which::Latest => all.iter().rev().find(|(_, e)| permanent || !e.deleted),
                Which::Number(n) => all.get_key_value(&n),
            };
            let (v, e) = found.ok_or_else(|| RegistryError::VersionNotFound(format!("{which:?}")))?;
            match (permanent, e.deleted) {
                (false, true) => return Err(RegistryError::VersionSoftDeleted(*v)),
                (true, false) => return Err(RegistryError::VersionNotSoftDeleted(*v)),
                (false, false) => {
                    ((version_key(subject, *v), Some(to_json(&VersionEntry { id: e.id, deleted: true })?)), *v)
                }
                (true, true) => ((version_key(subject, *v), None), *v),
            }
        };
        self.commit(vec![change]).await?;
        Ok(version)
    }

    /// The level of `subject` (`None`: the global one); with `fallback`, a subject without
    /// its own level answers the global one.
    pub fn level(&self, subject: Option<&str>, fallback: bool) -> Result<Level> {
        let state = self.state.read();
        let key = subject.unwrap_or("");
        match state.levels.get(key) {
            Some(l) => Ok(*l),
            None if subject.is_none() || fallback => Ok(state.levels.get("").copied().unwrap_or_default()),
            None => Err(RegistryError::SubjectConfigNotFound(key.to_owned())),
        }
    }

    /// Sets (`Some`) or removes (`None`) a level (`subject` `None`: the global one).
    pub async fn set_level(&self, subject: Option<&str>, level: Option<Level>) -> Result<Option<Level>> {
        let _writing = self.writes.lock().await;
        self.catch_up().await?;
        let key = subject.unwrap_or("").to_owned();
        let previous = self.state.read().levels.get(&key).copied();
        if level.is_none() && previous.is_none() {
            return Err(RegistryError::SubjectConfigNotFound(key));
        }
        self.commit(vec![(level_key(&key), level.map(|l| l.as_str().as_bytes().to_vec()))]).await?;
        Ok(previous)
    }

    /// Which parts of `topic`'s records must match a schema (as the registry keeps it).
    pub fn topic_validation(&self, topic: &str) -> TopicValidation {
        self.state.read().topics.get(topic).copied().unwrap_or_default()
    }

    /// Changes which parts of `topic`'s records must match a schema (`None`: as it was); with
    /// neither, the entry goes. The new setting.
    pub async fn set_topic_validation(
        &self,
        topic: &str,
        key: Option<bool>,
        value: Option<bool>,
    ) -> Result<TopicValidation> {
        let _writing = self.writes.lock().await;
        self.catch_up().await?;
        let current = self.topic_validation(topic);
        let next = TopicValidation { key: key.unwrap_or(current.key), value: value.unwrap_or(current.value) };
        if next != current {
            let entry = if next == TopicValidation::default() { None } else { Some(to_json(&next)?) };
            self.commit(vec![(topic_key(topic), entry)]).await?;
        }
        Ok(next)
    }

    /// Whether `text` could be registered under `subject` against `which` version (or all
    /// live ones, per the subject's level, when `None`): the reasons it could not.
    pub fn check(&self, subject: &str, which: Option<Which>, kind: SchemaType, text: &str) -> Result<Vec<String>> {
        let parsed = ParsedSchema::parse(kind, text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
        let level = self.level(Some(subject), true)?;
        let state = self.state.read();
        let live = live_versions(&state, subject).unwrap_or_default();
        let against: Vec<&ParsedSchema> = match which {
            None => live.iter().filter_map(|(_, e)| state.schemas.get(&e.id)).map(|s| &*s.parsed).collect(),
            Some(w) => {
                drop(state);
                let v = self.version(subject, w, false)?;
                return Ok(level.check(&parsed, &[&*self.parsed(v.id)?]));
            }
        };
        Ok(level.check(&parsed, &against))
    }
}

/// What a registration comes to.
enum Decided {
    /// The subject has the schema already.
    Found(u32),
    /// Entries to write for it.
    Write { changes: Vec<(Vec<u8>, Option<Vec<u8>>)>, id: u32, version: u32 },
}

/// Applies one entry (a put, or a delete with `None`) to the state. On a log several replicas
/// write, two may choose the same id or version at once: the first entry for a schema id or a
/// version keeps it (a version's later entries may only mark it deleted or remove it).
fn apply(state: &mut State, key: &[u8], value: Option<&[u8]>) -> crate::error::Result<()> {
    if let Some(id) = key.strip_prefix(b"g/s/") {
        let id = u32::from_be_bytes(id.try_into().map_err(|_| corrupt("schema key"))?);
        let Some(value) = value else { return Ok(()) };
        if state.schemas.contains_key(&id) {
            return Ok(());
        }
        let e: SchemaEntry = serde_json::from_slice(value).map_err(|_| corrupt("schema"))?;
        let parsed = ParsedSchema::parse(e.kind, &e.schema).map_err(|e| corrupt(&e.to_string()))?;
        state.by_canonical.entry((e.kind, parsed.canonical.clone())).or_insert(id);
        state.schemas.insert(id, Stored { text: e.schema, parsed: Arc::new(parsed) });
    } else if let Some(rest) = key.strip_prefix(b"g/v/") {
        let split = rest.len().checked_sub(5).filter(|at| rest[*at] == 0).ok_or_else(|| corrupt("version key"))?;
        let subject = std::str::from_utf8(&rest[..split]).map_err(|_| corrupt("subject"))?;
        let version = u32::from_be_bytes(rest[split + 1..].try_into().map_err(|_| corrupt("version"))?);
        match value {
            Some(value) => {
                let e: VersionEntry = serde_json::from_slice(value).map_err(|_| corrupt("version"))?;
                let versions = state.subjects.entry(subject.to_owned()).or_default();
                match versions.get_mut(&version) {
                    Some(held) if held.id != e.id => {}
                    Some(held) => *held = e,
                    None => {
                        versions.insert(version, e);
                    }
                }
            }
            None => {
                if let Some(versions) = state.subjects.get_mut(subject) {
                    versions.remove(&version);
                    if versions.is_empty() {
                        state.subjects.remove(subject);
                    }
                }
            }
        }
    } else if let Some(topic) = key.strip_prefix(b"g/t/") {
        let topic = std::str::from_utf8(topic).map_err(|_| corrupt("topic key"))?;
        match value {
            Some(value) => {
                let v: TopicValidation = serde_json::from_slice(value).map_err(|_| corrupt("topic validation"))?;
                state.topics.insert(topic.to_owned(), v);
            }
            None => {
                state.topics.remove(topic);
            }
        }
    } else if let Some(subject) = key.strip_prefix(b"g/c/") {
        let subject = std::str::from_utf8(subject).map_err(|_| corrupt("config key"))?;
        match value {
            Some(value) => {
                let level =
                    std::str::from_utf8(value).ok().and_then(|l| l.parse().ok()).ok_or_else(|| corrupt("level"))?;
                state.levels.insert(subject.to_owned(), level);
            }
            None => {
                state.levels.remove(subject);
            }
        }
    }
    Ok(())
}

fn live_versions(state: &State, subject: &str) -> Result<Vec<(u32, VersionEntry)>> {
    let all = state.subjects.get(subject).ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
    let live: Vec<_> = all.iter().filter(|(_, e)| !e.deleted).map(|(v, e)| (*v, *e)).collect();
    if live.is_empty() {
        return Err(RegistryError::SubjectNotFound(subject.to_owned()));
    }
    Ok(live)
}

fn version_of(state: &State, subject: &str, version: u32, e: VersionEntry) -> Result<Version> {
    let s = state.schemas.get(&e.id).ok_or_else(|| RegistryError::Store(format!("schema {} is missing", e.id)))?;
    Ok(Version { subject: subject.to_owned(), version, id: e.id, kind: s.parsed.kind, schema: s.text.clone() })
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| RegistryError::Store(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type": "record", "name": "U", "fields": [{"name": "id", "type": "long"}]}"#;
    const V2: &str = r#"{"type": "record", "name": "U", "fields": [{"name": "id", "type": "long"}, {"name": "n", "type": "int", "default": 0}]}"#;
    const BREAKS: &str = r#"{"type": "record", "name": "U", "fields": [{"name": "id", "type": "string"}]}"#;

    fn open(dir: &std::path::Path) -> Registry {
        let store = Arc::new(crate::store::Store::open(dir).unwrap());
        Registry::open(store).unwrap()
    }

    /// Ids are global and stable, versions count per subject, the same schema registered
    /// again answers its id, an incompatible one is refused, and all of it survives a reopen.
    #[tokio::test]
    async fn registrations_are_durable_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let id1 = reg.register("a-value", SchemaType::Avro, V1).await.unwrap();
        assert_eq!(reg.register("a-value", SchemaType::Avro, V1).await.unwrap(), id1, "idempotent");
        let id2 = reg.register("a-value", SchemaType::Avro, V2).await.unwrap();
        assert_ne!(id1, id2);
        assert_eq!(reg.register("b-value", SchemaType::Avro, V1).await.unwrap(), id1, "one id per schema, globally");
        let e = reg.register("a-value", SchemaType::Avro, BREAKS).await.unwrap_err();
        assert_eq!((e.code(), e.status()), (409, 409), "{e}");
        assert_eq!(reg.versions("a-value", false).unwrap(), vec![1, 2]);
        assert_eq!(reg.lookup("b-value", SchemaType::Avro, V1).unwrap().version, 1);
        assert_eq!(reg.lookup("b-value", SchemaType::Avro, V2).unwrap_err().code(), 40403);
        assert_eq!(reg.version("nope", Which::Latest, false).unwrap_err().code(), 40401);
        assert_eq!(reg.version("a-value", Which::Number(9), false).unwrap_err().code(), 40402);
        reg.set_level(Some("a-value"), Some(Level::None)).await.unwrap();
        let id3 = reg.register("a-value", SchemaType::Avro, BREAKS).await.unwrap();
        drop(reg);

        let reg = open(dir.path());
        assert_eq!(reg.version("a-value", Which::Latest, false).unwrap().id, id3);
        assert_eq!(reg.schema(id1).unwrap().0, SchemaType::Avro);
        assert_eq!(reg.level(Some("a-value"), false).unwrap(), Level::None);
        assert_eq!(reg.level(Some("b-value"), false).unwrap_err().code(), 40408);
        assert_eq!(reg.level(Some("b-value"), true).unwrap(), Level::Backward);
        assert_eq!(reg.usages(id1).unwrap(), vec![("a-value".to_owned(), 1), ("b-value".to_owned(), 1)]);
    }

    /// Confluent's delete rules: soft first, then permanent; numbering continues after a
    /// soft delete; ids stay resolvable.
    #[tokio::test]
    async fn deletes_are_soft_then_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let id = reg.register("s", SchemaType::Avro, V1).await.unwrap();
        reg.register("s", SchemaType::Avro, V2).await.unwrap();
        assert_eq!(reg.delete_version("s", Which::Number(2), true).await.unwrap_err().code(), 40407);
        assert_eq!(reg.delete_version("s", Which::Number(2), false).await.unwrap(), 2);
        assert_eq!(reg.delete_version("s", Which::Number(2), false).await.unwrap_err().code(), 40406);
        assert_eq!(reg.versions("s", false).unwrap(), vec![1]);
        assert_eq!(reg.versions("s", true).unwrap(), vec![1, 2]);
        assert_eq!(reg.delete_subject("s", true).await.unwrap_err().code(), 40405);
        assert_eq!(reg.delete_subject("s", false).await.unwrap(), vec![1]);
        assert_eq!(reg.delete_subject("s", false).await.unwrap_err().code(), 40404);
        assert!(reg.subjects(false).is_empty());
        assert_eq!(reg.subjects(true), vec!["s".to_owned()]);
        assert_eq!(reg.register("s", SchemaType::Avro, V1).await.unwrap(), id, "the same id again");
        assert_eq!(reg.versions("s", false).unwrap(), vec![3], "numbering continues");
        reg.delete_subject("s", false).await.unwrap();
        assert_eq!(reg.delete_subject("s", true).await.unwrap(), vec![1, 2, 3]);
        assert_eq!(reg.versions("s", true).unwrap_err().code(), 40401);
        assert!(reg.schema(id).is_ok(), "ids outlive their subjects");
        drop(reg);
        assert!(open(dir.path()).subjects(true).is_empty(), "permanent deletes are durable");
    }
}
