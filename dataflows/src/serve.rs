//! Feature serving: `GET /v1/features/{entity}` and `POST /v1/features:batch`, read from a
//! RocksDB snapshot of the committed state while the dataflow runs.
//!
//! A snapshot sees whole committed epochs (state, positions and the resume epoch are one write
//! batch), so a response never mixes two epochs: every entity of a response is as of the same
//! committed epoch, which the response names. Reads take a snapshot and point lookups; they
//! never take a lock the dataflow holds. One RocksDB instance serves all workers of a process,
//! so any server thread can read any entity's shard directly (with several processes the
//! request would go to the owning process; not built yet).
//!
//! Freshness: `age_ms` is the wall time since the commit in view was written; a response is
//! `stale` when that exceeds `stale_after` (the dataflow stopped or fell behind). Values stay
//! the last committed ones either way.
//!
//! The same service runs in the pipeline's process (`[server]`) and alone (`sluice serve`,
//! reading the state directory as a follower), so lookups go on while the pipeline is stopped.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_operators::FeatureSet;
use sluice_state::{BytesCodec, Snapshot, StateReader, Table};

use crate::server::ServerError;

/// What the feature routes need.
#[derive(Clone)]
pub struct FeatureService {
    /// Reads of the committed state.
    pub reader: StateReader,
    /// The features table.
    pub table: Table<BytesCodec>,
    /// The pipeline's features.
    pub set: Arc<FeatureSet>,
    /// Entities per batch request at most.
    pub batch_max: usize,
    /// Responses older than this (ms since the last commit) are flagged stale.
    pub stale_after_ms: i64,
    /// Where every served feature vector is appended (JSONL), if anywhere.
    pub log: Option<Arc<FeatureLog>>,
    /// A batch request's body: larger is answered 413.
    pub body_bytes_max: usize,
    /// A batch request's body not all in this long after its header is answered 408.
    pub body_timeout: std::time::Duration,
}

/// The feature log: one line per served vector — `served_at_ms`, `entity`, `epoch`,
/// `as_of_ms`, `features` — so that a training set can be rebuilt from exactly what was served,
/// point in time. Lines are buffered and flushed at least every second and when the server
/// stops. (Scored vectors are the `features` output, whose `time_ms` is their as-of time.)
#[derive(Debug)]
pub struct FeatureLog {
    out: std::sync::Mutex<(std::io::BufWriter<std::fs::File>, std::time::Instant)>,
}

impl FeatureLog {
    /// Appends to `path` (created with its folder).
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &std::path::Path) -> std::io::Result<FeatureLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FeatureLog { out: std::sync::Mutex::new((std::io::BufWriter::with_capacity(1 << 16, file), std::time::Instant::now())) })
    }

    fn write(&self, epoch: &Value, found: &Map<String, Value>) {
        use std::io::Write;
        let line = json!({
            "served_at_ms": sluice_operators::event::now_us() / 1000,
            "entity": found["entity"],
            "epoch": epoch,
            "as_of_ms": found["as_of_ms"],
            "features": found["features"],
        });
        let Ok(mut out) = self.out.lock() else { return };
        let _ = serde_json::to_writer(&mut out.0, &line);
        let _ = out.0.write_all(b"\n");
        if out.1.elapsed() >= std::time::Duration::from_secs(1) {
            let _ = out.0.flush();
            out.1 = std::time::Instant::now();
        }
    }
}

impl Drop for FeatureLog {
    fn drop(&mut self) {
        use std::io::Write;
        if let Ok(mut out) = self.out.lock() {
            let _ = out.0.flush();
        }
    }
}

impl std::fmt::Debug for FeatureService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureService").field("features", &self.set.names).field("batch_max", &self.batch_max).finish()
    }
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub(crate) fn error(status: StatusCode, message: String) -> ApiError {
    ApiError { status, message }
}

/// `?names=a,b&as_of=ms`.
#[derive(Debug, Deserialize)]
pub struct Params {
    names: Option<String>,
    as_of: Option<String>,
}

/// The body of a batch request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    entities: Vec<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    as_of: Option<i64>,
}

impl FeatureService {
    /// The service of a pipeline's `[server]` over `reader`; `None` when the pipeline has no
    /// features.
    ///
    /// # Errors
    /// The features do not fit the event schema, the feature log cannot be opened, or the state holds no features table.
    pub fn from_config(
        config: &crate::config::PipelineConfig,
        server: &crate::config::ServerSection,
        reader: StateReader,
    ) -> Result<Option<Self>, ServerError> {
        if config.features.is_empty() {
            return Ok(None);
        }
        let set = FeatureSet::new(&config.features, &config.event.number_names()).map_err(ServerError::Features)?;
        let stale_after_ms = server.stale_after.ms();
        let log = match &server.feature_log {
            Some(path) => Some(Arc::new(FeatureLog::open(path).map_err(|source| ServerError::FeatureLog { path: path.clone(), source })?)),
            None => None,
        };
        let table = reader.table(sluice_operators::features::FEATURES_TABLE)?;
        Ok(Some(FeatureService {
            reader,
            table,
            set: Arc::new(set),
            batch_max: server.batch_max,
            stale_after_ms,
            log,
            body_bytes_max: server.body_bytes_max,
            body_timeout: std::time::Duration::from_millis(server.body_timeout.ms().max(1) as u64),
        }))
    }

    /// Indexes of the selected names (all when `None`).
    fn select(&self, names: Option<Vec<String>>) -> Result<Vec<usize>, ApiError> {
        match names {
            None => Ok((0..self.set.names.len()).collect()),
            Some(names) => names
                .iter()
                .map(|n| {
                    self.set
                        .names
                        .iter()
                        .position(|x| x == n)
                        .ok_or_else(|| error(StatusCode::BAD_REQUEST, format!("unknown feature `{n}`; features are {:?}", self.set.names)))
                })
                .collect(),
        }
    }

    /// The epoch in view and the freshness fields.
    fn header(&self, snapshot: &Snapshot<'_>) -> Result<Map<String, Value>, ApiError> {
        let resume = snapshot.resume_epoch().map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        // The age of the commit in view, not of the process's last commit: a follower (`sluice
        // serve`) shows what it reads, and a snapshot taken just before a commit is as old as it is.
        let committed_at = snapshot.committed_at_ms().map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let now = sluice_operators::event::now_us() / 1000;
        let age = committed_at.map(|c| (now - c).max(0));
        let mut m = Map::new();
        m.insert("epoch".into(), if resume == 0 { Value::Null } else { json!(resume - 1) });
        m.insert("age_ms".into(), json!(age));
        m.insert("stale".into(), json!(age.is_none_or(|a| a > self.stale_after_ms)));
        Ok(m)
    }

    /// One entity's features, or `None` if unknown.
    fn lookup(&self, snapshot: &Snapshot<'_>, entity: &str, selected: &[usize], as_of: Option<i64>) -> Result<Option<Map<String, Value>>, ApiError> {
        let Some(bytes) = snapshot.get(&self.table, entity.as_bytes()).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))? else {
            return Ok(None);
        };
        let served = self.set.serve(&bytes, as_of).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
        let mut features = Map::new();
        for i in selected {
            features.insert(self.set.names[*i].clone(), served.values[*i].map_or(Value::Null, |v| json!(v)));
        }
        let mut m = Map::new();
        m.insert("entity".into(), json!(entity));
        m.insert("features".into(), Value::Object(features));
        m.insert("as_of_ms".into(), json!(served.as_of_ms));
        m.insert("last_event_ms".into(), json!(served.last_event_ms));
        Ok(Some(m))
    }
}

fn parse_as_of(text: Option<&str>) -> Result<Option<i64>, ApiError> {
    match text {
        None => Ok(None),
        Some(t) => t.parse::<i64>().map(Some).map_err(|_| error(StatusCode::BAD_REQUEST, format!("as_of `{t}` is not a time in ms since the Unix epoch"))),
    }
}

/// `GET /v1/features/{entity}`.
pub async fn get_one(
    State(s): State<Arc<FeatureService>>,
    entity: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    let run = || -> Result<Response, ApiError> {
        let Path(entity) = entity.map_err(|e| error(StatusCode::BAD_REQUEST, format!("the entity in the path: {}", e.body_text())))?;
        let Query(p) = params.map_err(|e| error(StatusCode::BAD_REQUEST, format!("the query (?names=a,b&as_of=ms, each at most once): {}", e.body_text())))?;
        let as_of = parse_as_of(p.as_of.as_deref())?;
        let selected = s.select(p.names.map(|n| n.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect()))?;
        let view = s.reader.view();
        let snapshot = view.snapshot();
        let mut head = s.header(&snapshot)?;
        match s.lookup(&snapshot, &entity, &selected, as_of)? {
            Some(found) => {
                if let Some(log) = &s.log {
                    log.write(&head["epoch"], &found);
                }
                head.extend(found);
                Ok(Json(Value::Object(head)).into_response())
            }
            None => Err(error(StatusCode::NOT_FOUND, format!("unknown entity `{entity}`: no event of it is committed"))),
        }
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// A batch answer as one Arrow record batch in an IPC stream: columns `entity`, `found`,
/// `as_of_ms`, `last_event_ms`, then one float column per feature (null when undefined or the
/// entity is unknown); `epoch`, `age_ms` and `stale` in the schema's metadata.
fn arrow_batch(head: &Map<String, Value>, names: &[&str], results: &[Value]) -> Result<Vec<u8>, String> {
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let mut fields = vec![
        Field::new("entity", DataType::Utf8, false),
        Field::new("found", DataType::Boolean, false),
        Field::new("as_of_ms", DataType::Int64, true),
        Field::new("last_event_ms", DataType::Int64, true),
    ];
    fields.extend(names.iter().map(|n| Field::new(*n, DataType::Float64, true)));
    let metadata = head.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(results.iter().map(|r| r["entity"].as_str().unwrap_or_default()))),
        Arc::new(BooleanArray::from_iter(results.iter().map(|r| Some(r["found"] == true)))),
        Arc::new(Int64Array::from_iter(results.iter().map(|r| r["as_of_ms"].as_i64()))),
        Arc::new(Int64Array::from_iter(results.iter().map(|r| r["last_event_ms"].as_i64()))),
    ];
    for n in names {
        columns.push(Arc::new(Float64Array::from_iter(results.iter().map(|r| r["features"][*n].as_f64()))));
    }
    let batch = arrow::record_batch::RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(out)
}

/// `POST /v1/features:batch`; answers Arrow IPC when the request accepts
/// `application/vnd.apache.arrow.stream`.
pub async fn get_batch(State(s): State<Arc<FeatureService>>, headers: axum::http::HeaderMap, body: axum::body::Body) -> Response {
    let body = match sluice_connectors::http::read_body(body, s.body_bytes_max, s.body_timeout).await {
        Ok(body) => body,
        Err(e) => return error(e.status(), e.to_string()).into_response(),
    };
    let arrow = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains(ARROW_STREAM));
    let run = || -> Result<Response, ApiError> {
        let request: BatchRequest = serde_json::from_slice(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("the body must be {{\"entities\": [...], \"names\": [...]?, \"as_of\": ms?}}: {e}")))?;
        if request.entities.len() > s.batch_max {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("{} entities in one batch; at most {}", request.entities.len(), s.batch_max)));
        }
        let selected = s.select(request.names)?;
        let names: Vec<&str> = selected.iter().map(|i| s.set.names[*i].as_str()).collect();
        let view = s.reader.view();
        let snapshot = view.snapshot();
        let mut head = s.header(&snapshot)?;
        let mut results = Vec::with_capacity(request.entities.len());
        for entity in &request.entities {
            match s.lookup(&snapshot, entity, &selected, request.as_of)? {
                Some(mut found) => {
                    if let Some(log) = &s.log {
                        log.write(&head["epoch"], &found);
                    }
                    found.insert("found".into(), json!(true));
                    results.push(Value::Object(found));
                }
                None => results.push(json!({ "entity": entity, "found": false })),
            }
        }
        if arrow {
            let bytes = arrow_batch(&head, &names, &results).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
            return Ok(([(axum::http::header::CONTENT_TYPE, ARROW_STREAM)], bytes).into_response());
        }
        head.insert("results".into(), Value::Array(results));
        Ok(Json(Value::Object(head)).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}
