//! The coordinator's durable state in SQLite (WAL): jobs, clones and idempotency keys. Every
//! state transition is atomic (a savepoint) with a guarded `UPDATE … WHERE status = …`, so two
//! actors (API, job engine, reaper) can never both win the same transition and a crash never
//! leaves a half-made change.
//!
//! Writes go to one writer thread that owns the write connection and commits them in groups:
//! every write queued while the previous commit ran joins the next transaction, each in its own
//! savepoint, and no caller hears "done" before its group committed. Reads use a small pool of
//! reader connections (WAL readers never wait for the writer).

use crate::timestamps::rfc3339;
use clonepool_common::api::{
    CloneInfo, ClonePath, CloneResult, CloneStatus, JobResult, JobState, JobStatus, JobType,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const READERS: usize = 4;
/// Most writes committed together.
const MAX_GROUP: usize = 256;

/// Hands a write's outcome to its caller once the group's commit is known (`Some` = the
/// commit failed, with why).
type Deliver = Box<dyn FnOnce(Option<String>) + Send>;
/// One write, run on the writer thread inside the group transaction (`None`: the group's
/// transaction could not begin, so the write does not run).
type WriteOp = Box<dyn FnOnce(Option<&mut Connection>) -> Deliver + Send>;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    status      TEXT NOT NULL,
    progress    INTEGER NOT NULL DEFAULT 0,
    message     TEXT NOT NULL,
    request     TEXT NOT NULL,
    result      TEXT,
    error       TEXT,
    error_code  TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    clone_id    TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    not_before  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, not_before);

CREATE TABLE IF NOT EXISTS clones (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    clone_id        TEXT NOT NULL,
    job_id          TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    status          TEXT NOT NULL,
    source_url      TEXT NOT NULL,
    clone_url       TEXT NOT NULL,
    clone_host      TEXT NOT NULL,
    ttl_minutes     INTEGER NOT NULL,
    agent           TEXT,
    claim_agents    TEXT NOT NULL DEFAULT '[]',
    last_claim_cold INTEGER NOT NULL DEFAULT 0,
    node            TEXT,
    pod_id          TEXT,
    endpoint        TEXT,
    path            TEXT,
    created_at      INTEGER NOT NULL,
    ready_at        INTEGER,
    expires_at      INTEGER,
    ended_at        INTEGER,
    end_reason      TEXT
);
-- A live clone holds its name: this index is what makes customer_id unique among live clones.
CREATE UNIQUE INDEX IF NOT EXISTS clones_live_name ON clones(clone_id) WHERE status != 'released';
CREATE INDEX IF NOT EXISTS clones_by_status ON clones(status, expires_at);
CREATE INDEX IF NOT EXISTS clones_by_job ON clones(job_id);

-- What clonepool remembers about the sites it exports from and restores to: an application
-- password per site and user (later jobs skip the browser login), bound to a salted hash of
-- the login password it was made with (a job with another password never uses it), and when
-- the migrator plugin was last found active.
CREATE TABLE IF NOT EXISTS sites (
    url           TEXT NOT NULL,
    username      TEXT NOT NULL,
    app_password  TEXT,
    password_hash TEXT,
    plugin_seen   INTEGER NOT NULL,
    PRIMARY KEY (url, username)
);

-- Coordinator-wide secrets that must survive restarts (e.g. the idempotency HMAC key).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    route        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (route, key)
);
"#;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the coordinator database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database holds a value this coordinator cannot read: {0}")]
    Corrupt(String),
    #[error("a database task stopped unexpectedly: {0}")]
    Join(String),
    #[error("the database could not commit: {0}")]
    Commit(String),
    #[error("a live clone named {clone_id:?} already exists")]
    CloneNameTaken { clone_id: String },
    #[error("{limit} jobs are already waiting")]
    QueueFull { limit: u32 },
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
}

/// A job as stored.
#[derive(Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub job_type: JobType,
    pub state: JobState,
    pub progress: u8,
    pub message: String,
    /// The validated request as JSON (holds the source credentials; never logged).
    pub request_json: String,
    pub result_json: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub attempts: u32,
    pub clone_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub not_before: i64,
}

impl std::fmt::Debug for JobRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRow")
            .field("id", &self.id)
            .field("job_type", &self.job_type)
            .field("state", &self.state)
            .field("progress", &self.progress)
            .field("message", &self.message)
            .field("attempts", &self.attempts)
            .field("clone_id", &self.clone_id)
            .finish_non_exhaustive()
    }
}

impl JobRow {
    /// The API view of this job.
    pub fn to_status(&self) -> JobStatus {
        JobStatus {
            job_id: self.id.clone(),
            job_type: self.job_type,
            status: self.state,
            progress: self.progress,
            message: self.message.clone(),
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
            result: self
                .result_json
                .as_deref()
                .and_then(|json| serde_json::from_str::<JobResult>(json).ok()),
            error: self.error.clone(),
            error_code: self.error_code.clone(),
            clone_id: self.clone_id.clone(),
            attempts: self.attempts,
        }
    }
}

/// A clone as stored. `id` is the row id (a name can be reused once the clone is released).
#[derive(Debug, Clone, PartialEq)]
pub struct CloneRow {
    pub id: i64,
    pub clone_id: String,
    pub job_id: String,
    pub status: CloneStatus,
    pub source_url: String,
    pub clone_url: String,
    pub clone_host: String,
    pub ttl_minutes: u32,
    /// The agent serving it (base URL), once claimed.
    pub agent: Option<String>,
    /// Every agent a claim was sent to without a definite "no": releases go to all of them.
    pub claim_agents: Vec<String>,
    pub last_claim_cold: bool,
    pub node: Option<String>,
    pub pod_id: Option<String>,
    pub endpoint: Option<String>,
    pub path: Option<ClonePath>,
    pub created_at: i64,
    pub ready_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
}

impl CloneRow {
    pub fn to_info(&self) -> CloneInfo {
        CloneInfo {
            clone_id: self.clone_id.clone(),
            status: self.status,
            job_id: self.job_id.clone(),
            clone_url: self.clone_url.clone(),
            source_url: self.source_url.clone(),
            node: self.node.clone(),
            pod_id: self.pod_id.clone(),
            path: self.path,
            ttl_minutes: self.ttl_minutes,
            created_at: rfc3339(self.created_at),
            ready_at: self.ready_at.map(rfc3339),
            expires_at: self.expires_at.map(rfc3339),
            ended_at: self.ended_at.map(rfc3339),
            end_reason: self.end_reason.clone(),
        }
    }
}

/// A clone to create with its job.
#[derive(Debug, Clone)]
pub struct NewClone {
    pub clone_id: String,
    pub source_url: String,
    pub clone_url: String,
    pub clone_host: String,
    pub ttl_minutes: u32,
}

/// An `Idempotency-Key` with the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub route: &'static str,
    pub key: String,
    pub request_hash: String,
}

pub struct NewJob {
    pub job_id: String,
    pub job_type: JobType,
    pub request_json: String,
    pub clone: Option<NewClone>,
    pub idempotency: Option<IdempotencyKey>,
    pub max_queued: u32,
    pub now: i64,
}

/// Whether a POST made a job or found the one its idempotency key made before.
#[derive(Debug, Clone)]
pub enum Created {
    New(JobRow),
    Replayed(JobRow),
}

/// What an agent handed out for a clone.
#[derive(Clone)]
pub struct ClaimOutcome {
    pub agent: String,
    pub node: String,
    pub pod_id: String,
    pub endpoint: String,
    pub path: ClonePath,
    pub username: String,
    pub password: String,
    /// The clone's one-time login link, when the source site was imported.
    pub magic_login_url: Option<String>,
}

/// The answer to ending a clone early.
#[derive(Debug, Clone)]
pub enum EndOutcome {
    /// The clone was ready and is now `releasing`: the caller releases its pod.
    Releasing(CloneRow),
    /// Someone else already started releasing it.
    AlreadyReleasing(CloneRow),
    /// Its job had not started: the job is cancelled and the clone ended.
    CancelledJob(CloneRow),
    /// Its job is running; it can be deleted once the job ends.
    StillProvisioning {
        job_id: String,
    },
    NotFound,
}

#[derive(Debug, Clone)]
pub enum CancelOutcome {
    Cancelled(JobRow),
    NotCancellable(JobRow),
    NotFound,
}

#[derive(Debug, Clone)]
pub enum ExtendOutcome {
    Extended(Box<CloneRow>),
    NotLive,
    /// The remaining life would exceed the limit (minutes it would be).
    TooLong {
        remaining_minutes: i64,
    },
}

/// What start-up recovery did with a job found `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    Resumed(String),
    Failed(String),
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// To the writer thread; it stops when the last sender is dropped.
    writes: std::sync::mpsc::Sender<WriteOp>,
    readers: Vec<Mutex<Connection>>,
    /// Blocking reads are admitted only when a connection is free, so a burst of requests
    /// queues here (cheaply, in async) instead of as blocked threads on a mutex.
    read_slots: tokio::sync::Semaphore,
    next_reader: AtomicUsize,
    path: PathBuf,
    /// Length of a TTL minute in milliseconds (60 000; tests compress time).
    minute_ms: i64,
    /// Key of the idempotency request hashes (an HMAC: a stored hash must not let anyone test
    /// guesses of the passwords in the request).
    idempotency_secret: Vec<u8>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner.path.display())
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    // WAL + NORMAL: a commit survives a process crash (kill -9); only an OS crash or power
    // loss can lose the last commits.
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
    )
    .map_err(open_err)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating when missing) the database at `path`, file mode 0600.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // Created owner-only before SQLite opens it: SQLite gives the -wal and -shm files the
        // main file's mode, and jobs hold passwords until they end.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Open {
                    path: path.to_path_buf(),
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                        Some(source.to_string()),
                    ),
                })?;
        }
        let writer = open_connection(path)?;
        writer
            .execute_batch(SCHEMA)
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let idempotency_secret = {
            let fresh: [u8; 32] = rand::random();
            writer
                .execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('idempotency_secret', ?1)",
                    params![fresh.to_vec()],
                )
                .and_then(|_| {
                    writer.query_row(
                        "SELECT value FROM meta WHERE key = 'idempotency_secret'",
                        [],
                        |row| row.get::<_, Vec<u8>>(0),
                    )
                })
                .map_err(|source| StoreError::Open {
                    path: path.to_path_buf(),
                    source,
                })?
        };
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (writes, queue) = std::sync::mpsc::channel::<WriteOp>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_groups(writer, queue))
            .map_err(|err| StoreError::Join(format!("cannot start the writer thread: {err}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                writes,
                read_slots: tokio::sync::Semaphore::new(readers.len()),
                readers,
                next_reader: AtomicUsize::new(0),
                path: path.to_path_buf(),
                idempotency_secret,
                minute_ms: 60_000,
            }),
        })
    }

    /// The same store with TTL minutes of `minute_ms` milliseconds (tests compress time).
    /// Call before sharing the store.
    pub fn with_minute_ms(mut self, minute_ms: i64) -> Store {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.minute_ms = minute_ms.max(1);
        }
        self
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The request hash an `Idempotency-Key` is stored with: HMAC-SHA256 of the route and the
    /// canonical body under this coordinator's stored key.
    pub fn idempotency_hash(&self, route: &str, canonical: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.inner.idempotency_secret)
            .expect("HMAC takes keys of any length");
        mac.update(route.as_bytes());
        mac.update(b"\n");
        mac.update(canonical.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Runs `f` on the writer thread as part of the next group commit. `f` must make its
    /// changes inside `conn.savepoint()` (committed = released; dropped = rolled back) or as
    /// single statements.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, outcome) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let op: WriteOp = Box::new(move |conn: Option<&mut Connection>| {
            let result = match conn {
                Some(conn) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                    .unwrap_or_else(|_| Err(StoreError::Join("a database write panicked".into()))),
                None => Err(StoreError::Commit("the transaction could not begin".into())),
            };
            Box::new(move |commit_failed: Option<String>| {
                let _ = done.send(match commit_failed {
                    None => result,
                    Some(why) => Err(StoreError::Commit(why)),
                });
            })
        });
        self.inner
            .writes
            .send(op)
            .map_err(|_| StoreError::Join("the writer thread stopped".into()))?;
        outcome
            .await
            .map_err(|_| StoreError::Join("the writer thread stopped".into()))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let _slot = self
            .inner
            .read_slots
            .acquire()
            .await
            .map_err(|err| StoreError::Join(err.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
            for i in 0..inner.readers.len() {
                if let Ok(conn) = inner.readers[(start + i) % inner.readers.len()].try_lock() {
                    return f(&conn);
                }
            }
            let conn = inner.readers[start % inner.readers.len()]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|err| StoreError::Join(err.to_string()))?
    }

    /// A point read by key (tens of microseconds): run on the calling task when a reader
    /// connection is free, sparing two thread hand-offs on the hot API paths; otherwise like
    /// [`Store::read`]. WAL readers never wait for the writer.
    async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if let Ok(_slot) = self.inner.read_slots.try_acquire() {
            let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
            let readers = &self.inner.readers;
            for i in 0..readers.len() {
                if let Ok(conn) = readers[(start + i) % readers.len()].try_lock() {
                    return f(&conn);
                }
            }
        }
        self.read(f).await
    }

    /// Creates a job (and its clone) unless its idempotency key already made one, the clone
    /// name is taken by a live clone, or the queue is full.
    pub async fn create_job(&self, job: NewJob) -> Result<Created, StoreError> {
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            if let Some(idem) = &job.idempotency {
                let existing: Option<(String, String)> = tx
                    .query_row(
                        "SELECT request_hash, job_id FROM idempotency_keys WHERE route = ?1 AND key = ?2",
                        params![idem.route, idem.key],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                if let Some((hash, job_id)) = existing {
                    if hash != idem.request_hash {
                        return Err(StoreError::IdempotencyMismatch);
                    }
                    if let Some(row) = job_by_id(&tx, &job_id)? {
                        return Ok(Created::Replayed(row));
                    }
                    // The job was pruned: forget the key and make a new one.
                    exec(&tx,
                        "DELETE FROM idempotency_keys WHERE route = ?1 AND key = ?2",
                        params![idem.route, idem.key],
                    )?;
                }
            }
            // Counting stops at the limit: the cost stays bounded however long the queue is.
            let queued: u32 = one(&tx,
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE status = 'pending' LIMIT ?1)",
                params![job.max_queued],
                |r| r.get(0),
            )?;
            if queued >= job.max_queued {
                return Err(StoreError::QueueFull {
                    limit: job.max_queued,
                });
            }
            let clone_id = job.clone.as_ref().map(|c| c.clone_id.clone());
            exec(&tx,
                "INSERT INTO jobs (id, type, status, progress, message, request, attempts, clone_id,
                                   created_at, updated_at, not_before)
                 VALUES (?1, ?2, 'pending', 0, 'Queued', ?3, 0, ?4, ?5, ?5, ?5)",
                params![
                    job.job_id,
                    job.job_type.as_str(),
                    job.request_json,
                    clone_id,
                    job.now
                ],
            )?;
            if let Some(clone) = &job.clone {
                let inserted = exec(&tx,
                    "INSERT INTO clones (clone_id, job_id, status, source_url, clone_url, clone_host,
                                         ttl_minutes, created_at)
                     VALUES (?1, ?2, 'provisioning', ?3, ?4, ?5, ?6, ?7)",
                    params![
                        clone.clone_id,
                        job.job_id,
                        clone.source_url,
                        clone.clone_url,
                        clone.clone_host,
                        clone.ttl_minutes,
                        job.now
                    ],
                );
                match inserted {
                    Err(rusqlite::Error::SqliteFailure(err, _))
                        if err.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        return Err(StoreError::CloneNameTaken {
                            clone_id: clone.clone_id.clone(),
                        });
                    }
                    other => {
                        other?;
                    }
                }
            }
            if let Some(idem) = &job.idempotency {
                exec(&tx,
                    "INSERT INTO idempotency_keys (route, key, request_hash, job_id, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![idem.route, idem.key, idem.request_hash, job.job_id, job.now],
                )?;
            }
            let row = job_by_id(&tx, &job.job_id)?
                .ok_or_else(|| StoreError::Corrupt("a job vanished inside its transaction".into()))?;
            tx.commit()?;
            Ok(Created::New(row))
        })
        .await
    }

    pub async fn job(&self, job_id: &str) -> Result<Option<JobRow>, StoreError> {
        let job_id = job_id.to_string();
        self.read_point(move |conn| job_by_id(conn, &job_id)).await
    }

    /// Moves the oldest due pending job to `running` (one more attempt) and returns it.
    pub async fn start_next_job(&self, now: i64) -> Result<Option<JobRow>, StoreError> {
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let id: Option<String> = tx
                .query_row(
                    "SELECT id FROM jobs WHERE status = 'pending' AND not_before <= ?1
                     ORDER BY not_before, created_at, rowid LIMIT 1",
                    params![now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            exec(
                &tx,
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, updated_at = ?2,
                        progress = MAX(progress, 10),
                        message = CASE WHEN attempts = 0 THEN 'Choosing a node'
                                       ELSE 'Retrying: choosing a node' END
                 WHERE id = ?1 AND status = 'pending'",
                params![id, now],
            )?;
            let row = job_by_id(&tx, &id)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// When the next pending job becomes due (ms), if any is pending.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.read(|conn| {
            Ok(one(
                conn,
                "SELECT MIN(not_before) FROM jobs WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Progress of a running job (ignored once it is not running).
    pub async fn set_progress(
        &self,
        job_id: &str,
        progress: u8,
        message: String,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write_progress(job_id, progress, message, now, true)
            .await
    }

    /// Like [`Store::set_progress`] for a note written from a background task: a note made at
    /// `made_at` never overwrites a write made after it, so a slow note cannot put an older
    /// step back over a newer one.
    pub async fn note_progress(
        &self,
        job_id: &str,
        progress: u8,
        message: String,
        made_at: i64,
    ) -> Result<(), StoreError> {
        self.write_progress(job_id, progress, message, made_at, false)
            .await
    }

    async fn write_progress(
        &self,
        job_id: &str,
        progress: u8,
        message: String,
        at: i64,
        over_newer_writes: bool,
    ) -> Result<(), StoreError> {
        let job_id = job_id.to_string();
        self.write(move |conn| {
            exec(
                conn,
                "UPDATE jobs SET progress = ?2, message = ?3, updated_at = ?4
                 WHERE id = ?1 AND status = 'running' AND (?5 OR updated_at <= ?4)",
                params![job_id, progress, message, at, over_newer_writes],
            )?;
            Ok(())
        })
        .await
    }

    /// Puts a running job back to `pending` until `not_before` after a transient failure.
    pub async fn retry_later(
        &self,
        job_id: &str,
        not_before: i64,
        message: String,
        now: i64,
    ) -> Result<(), StoreError> {
        let job_id = job_id.to_string();
        self.write(move |conn| {
            exec(
                conn,
                "UPDATE jobs SET status = 'pending', not_before = ?2, message = ?3, updated_at = ?4
                 WHERE id = ?1 AND status = 'running'",
                params![job_id, not_before, message, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Fails a job that is not yet terminal and ends its clone (the clone's pod, if one may have
    /// been claimed, goes to `releasing`). Returns the job after the change.
    pub async fn fail_job(
        &self,
        job_id: &str,
        code: &str,
        message: String,
        now: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        let job_id = job_id.to_string();
        let code = code.to_string();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            fail_job_tx(&tx, &job_id, &code, &message, now)?;
            let row = job_by_id(&tx, &job_id)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// Completes a running job that has no clone (restore, rollback) with `result`. Returns the
    /// job after the change, `None` when it was no longer running.
    pub async fn complete_job(
        &self,
        job_id: &str,
        result: JobResult,
        message: String,
        now: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        let job_id = job_id.to_string();
        let result_json =
            serde_json::to_string(&result).map_err(|err| StoreError::Corrupt(err.to_string()))?;
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let changed = exec(
                &tx,
                "UPDATE jobs SET status = 'completed', progress = 100, message = ?2, result = ?3,
                        updated_at = ?4
                 WHERE id = ?1 AND status = 'running'",
                params![job_id, message, result_json, now],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            forget_request_secrets(&tx, &job_id)?;
            let row = job_by_id(&tx, &job_id)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    /// The application password remembered for `username` on the site at `url`, when it was
    /// made with the same login `password`.
    pub async fn site_app_password(
        &self,
        url: &str,
        username: &str,
        password: &str,
    ) -> Result<Option<String>, StoreError> {
        let (url, username) = (url.to_string(), username.to_string());
        let row: Option<(Option<String>, Option<String>)> = self
            .read(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT app_password, password_hash FROM sites WHERE url = ?1 AND username = ?2",
                        params![url, username],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?)
            })
            .await?;
        Ok(match row {
            Some((Some(app_password), Some(hash))) if password_matches(&hash, password) => {
                Some(app_password)
            }
            _ => None,
        })
    }

    /// Remembers that the plugin answered on `url`, with an application password when one was
    /// made (bound to the login `password`; an existing one is kept when `app_password` is
    /// `None`).
    pub async fn remember_site(
        &self,
        url: &str,
        username: &str,
        password: &str,
        app_password: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let (url, username) = (url.to_string(), username.to_string());
        let app_password = app_password.map(str::to_string);
        let hash = app_password.as_ref().map(|_| hash_password(password));
        self.write(move |conn| {
            exec(
                conn,
                "INSERT INTO sites (url, username, app_password, password_hash, plugin_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (url, username) DO UPDATE SET plugin_seen = ?5,
                     app_password = COALESCE(?3, app_password),
                     password_hash = COALESCE(?4, password_hash)",
                params![url, username, app_password, hash, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Forgets a remembered application password that stopped working.
    pub async fn forget_site_password(&self, url: &str, username: &str) -> Result<(), StoreError> {
        let (url, username) = (url.to_string(), username.to_string());
        self.write(move |conn| {
            exec(
                conn,
                "UPDATE sites SET app_password = NULL WHERE url = ?1 AND username = ?2",
                params![url, username],
            )?;
            Ok(())
        })
        .await
    }

    /// The clone (live or not) served at `clone_url`, newest first.
    pub async fn clone_by_url(&self, clone_url: &str) -> Result<Option<CloneRow>, StoreError> {
        let clone_url = clone_url.trim_end_matches('/').to_string();
        Ok(self.list_clones(false).await?.into_iter().find(|c| {
            c.clone_url
                .trim_end_matches('/')
                .eq_ignore_ascii_case(&clone_url)
        }))
    }

    /// Cancels a pending job (and ends its clone). Running and finished jobs are not cancellable.
    pub async fn cancel_job(&self, job_id: &str, now: i64) -> Result<CancelOutcome, StoreError> {
        let job_id = job_id.to_string();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let Some(job) = job_by_id(&tx, &job_id)? else {
                return Ok(CancelOutcome::NotFound);
            };
            if job.state != JobState::Pending {
                return Ok(CancelOutcome::NotCancellable(job));
            }
            cancel_job_tx(&tx, &job_id, "cancelled on request", now)?;
            let job = job_by_id(&tx, &job_id)?.ok_or_else(|| {
                StoreError::Corrupt("a job vanished inside its transaction".into())
            })?;
            tx.commit()?;
            Ok(CancelOutcome::Cancelled(job))
        })
        .await
    }

    /// Start-up recovery: every job left `running` by a stopped coordinator is resumed (clone
    /// jobs: the agent's claim is idempotent per clone id, and the agents already asked are asked
    /// again first) while attempts remain, or failed with a clear error. None stays running.
    pub async fn recover_interrupted(
        &self,
        max_attempts: u32,
        now: i64,
    ) -> Result<Vec<Recovered>, StoreError> {
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let running: Vec<JobRow> = {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'running'"
                ))?;
                let rows = stmt.query_map([], job_from_row)?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            let mut outcome = Vec::new();
            for job in running {
                match job.job_type {
                    // A clone's claim is idempotent per clone id; rolling a backup back twice
                    // restores the same state.
                    JobType::Clone | JobType::Rollback if job.attempts < max_attempts => {
                        exec(
                            &tx,
                            "UPDATE jobs SET status = 'pending', not_before = ?2, updated_at = ?2,
                                    message = 'Resuming after a coordinator restart'
                             WHERE id = ?1 AND status = 'running'",
                            params![job.id, now],
                        )?;
                        outcome.push(Recovered::Resumed(job.id));
                    }
                    JobType::Clone | JobType::Rollback => {
                        let message = format!(
                            "the coordinator stopped while this {} job was running, and it had \
                             already been tried {} times; submit it again",
                            job.job_type.as_str(),
                            job.attempts
                        );
                        fail_job_tx(&tx, &job.id, "interrupted", &message, now)?;
                        outcome.push(Recovered::Failed(job.id));
                    }
                    JobType::Restore => {
                        let message = "the coordinator stopped while this restore was running; \
                                       a restore is not repeated automatically: the target's \
                                       plugin either finished the import or put its backup back; \
                                       check the target's backups (GET \
                                       ?rest_route=/clonepool/v1/backups) and submit it again"
                            .to_string();
                        fail_job_tx(&tx, &job.id, "interrupted", &message, now)?;
                        outcome.push(Recovered::Failed(job.id));
                    }
                }
            }
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    /// Remembers that a claim for this clone is about to be sent to `agent`.
    pub async fn record_claim_attempt(
        &self,
        clone_row: i64,
        agent: &str,
        cold: bool,
    ) -> Result<Vec<String>, StoreError> {
        let agent = agent.to_string();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let mut agents = claim_agents_tx(&tx, clone_row)?;
            if !agents.contains(&agent) {
                agents.push(agent);
            }
            exec(
                &tx,
                "UPDATE clones SET claim_agents = ?2, last_claim_cold = ?3 WHERE id = ?1",
                params![clone_row, encode_agents(&agents), cold],
            )?;
            tx.commit()?;
            Ok(agents)
        })
        .await
    }

    /// Forgets `agent` after it answered a definite "no" (it holds no pod for this clone).
    pub async fn forget_claim_agent(&self, clone_row: i64, agent: &str) -> Result<(), StoreError> {
        let agent = agent.to_string();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let mut agents = claim_agents_tx(&tx, clone_row)?;
            agents.retain(|a| a != &agent);
            exec(
                &tx,
                "UPDATE clones SET claim_agents = ?2 WHERE id = ?1",
                params![clone_row, encode_agents(&agents)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Completes a running clone job: the clone becomes `ready` with its pod, and the job
    /// `completed` with the result. Returns `None` when the job was no longer running.
    /// `on_ready` sees the ready clone just before the change commits, so whatever it sets up
    /// (the edge's route) is in place for a client that reads the job as completed.
    pub async fn complete_clone_job(
        &self,
        job_id: &str,
        clone_row: i64,
        claim: ClaimOutcome,
        now: i64,
        on_ready: impl FnOnce(&CloneRow) + Send + 'static,
    ) -> Result<Option<(JobRow, CloneRow)>, StoreError> {
        let job_id = job_id.to_string();
        let minute_ms = self.inner.minute_ms;
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let Some(clone) = clone_by_row(&tx, clone_row)? else {
                return Ok(None);
            };
            let job = job_by_id(&tx, &job_id)?;
            if clone.status != CloneStatus::Provisioning
                || job.as_ref().map(|j| j.state) != Some(JobState::Running)
            {
                return Ok(None);
            }
            let expires_at = now + i64::from(clone.ttl_minutes) * minute_ms;
            let mut agents = clone.claim_agents.clone();
            if !agents.contains(&claim.agent) {
                agents.push(claim.agent.clone());
            }
            exec(
                &tx,
                "UPDATE clones SET status = 'ready', agent = ?2, claim_agents = ?3, node = ?4,
                        pod_id = ?5, endpoint = ?6, path = ?7, ready_at = ?8, expires_at = ?9
                 WHERE id = ?1",
                params![
                    clone_row,
                    claim.agent,
                    encode_agents(&agents),
                    claim.node,
                    claim.pod_id,
                    claim.endpoint,
                    claim.path.as_str(),
                    now,
                    expires_at
                ],
            )?;
            let result = JobResult::Clone(CloneResult {
                clone_id: clone.clone_id.clone(),
                clone_url: clone.clone_url.clone(),
                username: claim.username.clone(),
                password: claim.password.clone(),
                magic_login_url: claim.magic_login_url.clone(),
                expires_at: rfc3339(expires_at),
                path: claim.path,
                node: claim.node.clone(),
            });
            let result_json = serde_json::to_string(&result)
                .map_err(|err| StoreError::Corrupt(err.to_string()))?;
            exec(
                &tx,
                "UPDATE jobs SET status = 'completed', progress = 100, message = ?2, result = ?3,
                        updated_at = ?4
                 WHERE id = ?1",
                params![
                    job_id,
                    format!("Clone ready at {}", clone.clone_url),
                    result_json,
                    now
                ],
            )?;
            forget_request_secrets(&tx, &job_id)?;
            let job = job_by_id(&tx, &job_id)?;
            let clone = clone_by_row(&tx, clone_row)?;
            if let Some(clone) = &clone {
                on_ready(clone);
            }
            tx.commit()?;
            Ok(job.zip(clone))
        })
        .await
    }

    pub async fn clone_for_job(&self, job_id: &str) -> Result<Option<CloneRow>, StoreError> {
        let job_id = job_id.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {CLONE_COLUMNS} FROM clones WHERE job_id = ?1"),
                    params![job_id],
                    clone_from_row,
                )
                .optional()?)
        })
        .await
    }

    /// A clone by row id.
    pub async fn clone_row(&self, id: i64) -> Result<Option<CloneRow>, StoreError> {
        self.read_point(move |conn| clone_by_row(conn, id)).await
    }

    /// The live clone with this name, or else the most recent ended one.
    pub async fn clone_by_name(&self, clone_id: &str) -> Result<Option<CloneRow>, StoreError> {
        let clone_id = clone_id.to_string();
        self.read_point(move |conn| clone_by_name_tx(conn, &clone_id))
            .await
    }

    /// Live clones oldest first, or (with `include_ended`) the newest 500 of all.
    pub async fn list_clones(&self, include_ended: bool) -> Result<Vec<CloneRow>, StoreError> {
        self.read(move |conn| {
            let sql = if include_ended {
                format!("SELECT {CLONE_COLUMNS} FROM clones ORDER BY id DESC LIMIT 500")
            } else {
                format!("SELECT {CLONE_COLUMNS} FROM clones WHERE status != 'released' ORDER BY id")
            };
            Ok(query_clones(conn, &sql, [])?)
        })
        .await
    }

    /// Ends a clone early (DELETE): see [`EndOutcome`].
    pub async fn end_clone(&self, clone_id: &str, now: i64) -> Result<EndOutcome, StoreError> {
        let clone_id = clone_id.to_string();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let Some(clone) = clone_by_name_tx(&tx, &clone_id)? else {
                return Ok(EndOutcome::NotFound);
            };
            let outcome = match clone.status {
                CloneStatus::Released => EndOutcome::NotFound,
                CloneStatus::Releasing => EndOutcome::AlreadyReleasing(clone),
                CloneStatus::Ready => {
                    exec(&tx,
                        "UPDATE clones SET status = 'releasing', end_reason = 'deleted', ended_at = ?2
                         WHERE id = ?1 AND status = 'ready'",
                        params![clone.id, now],
                    )?;
                    EndOutcome::Releasing(
                        clone_by_row(&tx, clone.id)?.ok_or_else(|| {
                            StoreError::Corrupt("a clone vanished inside its transaction".into())
                        })?,
                    )
                }
                CloneStatus::Provisioning => {
                    let job = job_by_id(&tx, &clone.job_id)?;
                    match job.map(|j| j.state) {
                        Some(JobState::Pending) => {
                            cancel_job_tx(&tx, &clone.job_id, "cancelled: its clone was deleted", now)?;
                            exec(&tx,
                                "UPDATE clones SET end_reason = 'deleted' WHERE id = ?1",
                                params![clone.id],
                            )?;
                            EndOutcome::CancelledJob(clone_by_row(&tx, clone.id)?.ok_or_else(
                                || StoreError::Corrupt("a clone vanished inside its transaction".into()),
                            )?)
                        }
                        _ => EndOutcome::StillProvisioning {
                            job_id: clone.job_id.clone(),
                        },
                    }
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    /// Adds `minutes` to a live clone's life, unless the remaining life would exceed
    /// `max_remaining_minutes`.
    pub async fn extend_clone(
        &self,
        clone_id: &str,
        minutes: u32,
        max_remaining_minutes: u32,
        now: i64,
    ) -> Result<ExtendOutcome, StoreError> {
        let clone_id = clone_id.to_string();
        let minute_ms = self.inner.minute_ms;
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let Some(clone) = clone_by_name_tx(&tx, &clone_id)? else {
                return Ok(ExtendOutcome::NotLive);
            };
            let max = i64::from(max_remaining_minutes);
            match clone.status {
                CloneStatus::Provisioning => {
                    let total = i64::from(clone.ttl_minutes) + i64::from(minutes);
                    if total > max {
                        return Ok(ExtendOutcome::TooLong {
                            remaining_minutes: total,
                        });
                    }
                    exec(&tx,
                        "UPDATE clones SET ttl_minutes = ?2 WHERE id = ?1 AND status = 'provisioning'",
                        params![clone.id, total],
                    )?;
                }
                CloneStatus::Ready => {
                    let expires = clone.expires_at.unwrap_or(now) + i64::from(minutes) * minute_ms;
                    let remaining = (expires - now + minute_ms - 1) / minute_ms;
                    if remaining > max {
                        return Ok(ExtendOutcome::TooLong {
                            remaining_minutes: remaining,
                        });
                    }
                    exec(&tx,
                        "UPDATE clones SET ttl_minutes = ttl_minutes + ?2, expires_at = ?3
                         WHERE id = ?1 AND status = 'ready'",
                        params![clone.id, minutes, expires],
                    )?;
                }
                CloneStatus::Releasing | CloneStatus::Released => return Ok(ExtendOutcome::NotLive),
            }
            let clone = clone_by_row(&tx, clone.id)?
                .ok_or_else(|| StoreError::Corrupt("a clone vanished inside its transaction".into()))?;
            tx.commit()?;
            Ok(ExtendOutcome::Extended(Box::new(clone)))
        })
        .await
    }

    /// Moves every ready clone whose time is up to `releasing` and returns them. A clone is
    /// returned by exactly one call.
    pub async fn expire_due(&self, now: i64) -> Result<Vec<CloneRow>, StoreError> {
        self.write(move |conn| {
            let sql = format!(
                "UPDATE clones SET status = 'releasing', end_reason = 'expired', ended_at = ?1
                 WHERE status = 'ready' AND expires_at <= ?1
                 RETURNING {CLONE_COLUMNS}"
            );
            Ok(query_clones(conn, &sql, params![now])?)
        })
        .await
    }

    pub async fn releasing_clones(&self) -> Result<Vec<CloneRow>, StoreError> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {CLONE_COLUMNS} FROM clones WHERE status = 'releasing' ORDER BY id"
            );
            Ok(query_clones(conn, &sql, [])?)
        })
        .await
    }

    /// Marks a releasing clone released (its pod was handed back). False if it was not releasing.
    pub async fn finish_release(&self, clone_row: i64, now: i64) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let changed = exec(
                conn,
                "UPDATE clones SET status = 'released', ended_at = COALESCE(ended_at, ?2)
                 WHERE id = ?1 AND status = 'releasing'",
                params![clone_row, now],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// Ready clones, for the edge proxy's routing table.
    pub async fn ready_clones(&self) -> Result<Vec<CloneRow>, StoreError> {
        self.read(|conn| {
            let sql = format!("SELECT {CLONE_COLUMNS} FROM clones WHERE status = 'ready'");
            Ok(query_clones(conn, &sql, [])?)
        })
        .await
    }

    /// Number of jobs in each state.
    pub async fn job_counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
            let mut counts: Vec<(JobState, u64)> =
                JobState::ALL.iter().map(|state| (*state, 0)).collect();
            for row in rows {
                let (status, count) = row?;
                let state: JobState = status.parse().map_err(StoreError::Corrupt)?;
                if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
                    slot.1 = count;
                }
            }
            Ok(counts)
        })
        .await
    }

    /// Deletes idempotency keys older than `key_cutoff` and finished jobs (with their ended
    /// clones) older than `job_cutoff`. Returns how many jobs were deleted.
    pub async fn prune(&self, key_cutoff: i64, job_cutoff: i64) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            exec(&tx,
                "DELETE FROM idempotency_keys WHERE created_at < ?1",
                params![key_cutoff],
            )?;
            let deleted = exec(&tx,
                "DELETE FROM jobs WHERE status IN ('completed', 'failed', 'cancelled')
                   AND updated_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM clones c WHERE c.job_id = jobs.id AND c.status != 'released')",
                params![job_cutoff],
            )?;
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    /// Runs raw SQL through the writer (tests set up odd states with it).
    #[cfg(test)]
    pub(crate) async fn execute_sql(&self, sql: &'static str) -> Result<(), StoreError> {
        self.write(move |conn| Ok(conn.execute_batch(sql)?)).await
    }

    /// True when the database answers a query.
    pub async fn ping(&self) -> bool {
        self.read(|conn| Ok(one(conn, "SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }
}

/// The writer thread: takes every queued write (up to [`MAX_GROUP`]), runs them in one
/// `BEGIN IMMEDIATE … COMMIT`, then tells each caller. Stops when every sender is gone.
fn write_groups(mut conn: Connection, queue: std::sync::mpsc::Receiver<WriteOp>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
            let why = err.to_string();
            tracing::error!(error = %why, "cannot begin a write transaction");
            for op in group {
                // Nothing runs: each caller hears why.
                op(None)(Some(why.clone()));
            }
            continue;
        }
        let delivers: Vec<Deliver> = group.into_iter().map(|op| op(Some(&mut conn))).collect();
        match conn.execute_batch("COMMIT") {
            Ok(()) => delivers.into_iter().for_each(|deliver| deliver(None)),
            Err(err) => {
                let _ = conn.execute_batch("ROLLBACK");
                let why = err.to_string();
                tracing::error!(error = %why, "a group commit failed; its writes were rolled back");
                for deliver in delivers {
                    deliver(Some(why.clone()));
                }
            }
        }
    }
}

const JOB_COLUMNS: &str =
    "id, type, status, progress, message, request, result, error, error_code, \
                           attempts, clone_id, created_at, updated_at, not_before";

const CLONE_COLUMNS: &str = "id, clone_id, job_id, status, source_url, clone_url, clone_host, \
                             ttl_minutes, agent, claim_agents, last_claim_cold, node, pod_id, \
                             endpoint, path, created_at, ready_at, expires_at, ended_at, end_reason";

/// `execute` through the connection's statement cache (SQL is parsed once).
fn exec<P: rusqlite::Params>(conn: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the connection's statement cache.
fn one<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: F,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

fn corrupt(err: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, err.into())
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: row.get(0)?,
        job_type: row.get::<_, String>(1)?.parse().map_err(corrupt)?,
        state: row.get::<_, String>(2)?.parse().map_err(corrupt)?,
        progress: row.get(3)?,
        message: row.get(4)?,
        request_json: row.get(5)?,
        result_json: row.get(6)?,
        error: row.get(7)?,
        error_code: row.get(8)?,
        attempts: row.get(9)?,
        clone_id: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
        not_before: row.get(13)?,
    })
}

/// Every clone row a statement selecting (or returning) `CLONE_COLUMNS` yields.
fn query_clones<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<Vec<CloneRow>> {
    conn.prepare_cached(sql)?
        .query_map(params, clone_from_row)?
        .collect()
}

fn clone_from_row(row: &Row<'_>) -> rusqlite::Result<CloneRow> {
    let agents: String = row.get(9)?;
    Ok(CloneRow {
        id: row.get(0)?,
        clone_id: row.get(1)?,
        job_id: row.get(2)?,
        status: row.get::<_, String>(3)?.parse().map_err(corrupt)?,
        source_url: row.get(4)?,
        clone_url: row.get(5)?,
        clone_host: row.get(6)?,
        ttl_minutes: row.get(7)?,
        agent: row.get(8)?,
        claim_agents: serde_json::from_str(&agents).map_err(|e| corrupt(e.to_string()))?,
        last_claim_cold: row.get(10)?,
        node: row.get(11)?,
        pod_id: row.get(12)?,
        endpoint: row.get(13)?,
        path: row
            .get::<_, Option<String>>(14)?
            .map(|p| p.parse().map_err(corrupt))
            .transpose()?,
        created_at: row.get(15)?,
        ready_at: row.get(16)?,
        expires_at: row.get(17)?,
        ended_at: row.get(18)?,
        end_reason: row.get(19)?,
    })
}

fn job_by_id(conn: &Connection, id: &str) -> Result<Option<JobRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            params![id],
            job_from_row,
        )
        .optional()?)
}

fn clone_by_row(conn: &Connection, id: i64) -> Result<Option<CloneRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {CLONE_COLUMNS} FROM clones WHERE id = ?1"),
            params![id],
            clone_from_row,
        )
        .optional()?)
}

fn clone_by_name_tx(conn: &Connection, clone_id: &str) -> Result<Option<CloneRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {CLONE_COLUMNS} FROM clones WHERE clone_id = ?1
                 ORDER BY (status != 'released') DESC, id DESC LIMIT 1"
            ),
            params![clone_id],
            clone_from_row,
        )
        .optional()?)
}

fn claim_agents_tx(tx: &Connection, clone_row: i64) -> Result<Vec<String>, StoreError> {
    let json: String = one(
        tx,
        "SELECT claim_agents FROM clones WHERE id = ?1",
        params![clone_row],
        |r| r.get(0),
    )?;
    serde_json::from_str(&json).map_err(|err| StoreError::Corrupt(err.to_string()))
}

fn encode_agents(agents: &[String]) -> String {
    serde_json::to_string(agents).unwrap_or_else(|_| "[]".into())
}

/// Ends the clone of a job that will not complete: `releasing` when an agent may hold a pod for
/// it, else `released` straight away.
fn end_clone_of_job(
    tx: &Connection,
    job_id: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    exec(
        tx,
        "UPDATE clones SET
            status = CASE WHEN claim_agents = '[]' THEN 'released' ELSE 'releasing' END,
            end_reason = COALESCE(end_reason, ?2), ended_at = ?3
         WHERE job_id = ?1 AND status IN ('provisioning', 'ready')",
        params![job_id, reason, now],
    )?;
    Ok(())
}

fn fail_job_tx(
    tx: &Connection,
    job_id: &str,
    code: &str,
    message: &str,
    now: i64,
) -> Result<(), StoreError> {
    let changed = exec(
        tx,
        "UPDATE jobs SET status = 'failed', error = ?2, error_code = ?3, updated_at = ?4,
                message = 'Failed'
         WHERE id = ?1 AND status IN ('pending', 'running')",
        params![job_id, message, code, now],
    )?;
    if changed == 1 {
        end_clone_of_job(tx, job_id, "job_failed", now)?;
        forget_request_secrets(tx, job_id)?;
    }
    Ok(())
}

/// A job that ended needs its request's passwords no more: drop them rather than keep them
/// until the job row is pruned.
/// `salt:sha256(salt || password)` in hex, with a random 16-byte salt.
fn hash_password(password: &str) -> String {
    use sha2::{Digest, Sha256};
    let salt: [u8; 16] = rand::random();
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    format!("{}:{}", hex::encode(salt), hex::encode(h.finalize()))
}

fn password_matches(stored: &str, password: &str) -> bool {
    use sha2::{Digest, Sha256};
    let Some((salt, digest)) = stored.split_once(':') else {
        return false;
    };
    let Ok(salt) = hex::decode(salt) else {
        return false;
    };
    let mut h = Sha256::new();
    h.update(&salt);
    h.update(password.as_bytes());
    crate::auth::ApiTokens::from_tokens(&[digest.to_string()]).accepts(&hex::encode(h.finalize()))
}

fn forget_request_secrets(tx: &Connection, job_id: &str) -> Result<(), StoreError> {
    exec(
        tx,
        "UPDATE jobs SET request = json_remove(request, '$.source_password', '$.source.password',
                                               '$.target.password')
         WHERE id = ?1 AND json_valid(request)",
        params![job_id],
    )?;
    Ok(())
}

fn cancel_job_tx(tx: &Connection, job_id: &str, why: &str, now: i64) -> Result<(), StoreError> {
    let changed = exec(
        tx,
        "UPDATE jobs SET status = 'cancelled', error = ?2, error_code = 'cancelled',
                message = 'Cancelled', updated_at = ?3
         WHERE id = ?1 AND status = 'pending'",
        params![job_id, why, now],
    )?;
    if changed == 1 {
        end_clone_of_job(tx, job_id, "cancelled", now)?;
        forget_request_secrets(tx, job_id)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn open_temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn the_database_and_its_wal_are_owner_only_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = open_temp();
        store
            .execute_sql(
                "CREATE TABLE mode_probe (x TEXT); INSERT INTO mode_probe VALUES ('secret');",
            )
            .await
            .unwrap();
        for name in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
        }
    }

    #[tokio::test]
    async fn a_remembered_application_password_serves_only_the_login_password_it_was_made_with() {
        let (_dir, store) = open_temp();
        let site = "http://shop.example";
        assert_eq!(
            store.site_app_password(site, "admin", "pw").await.unwrap(),
            None
        );
        store
            .remember_site(site, "admin", "right-pw", Some("app pw 1234"), 1)
            .await
            .unwrap();
        assert_eq!(
            store
                .site_app_password(site, "admin", "right-pw")
                .await
                .unwrap()
                .as_deref(),
            Some("app pw 1234")
        );
        assert_eq!(
            store
                .site_app_password(site, "admin", "wrong-pw")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .site_app_password(site, "other", "right-pw")
                .await
                .unwrap(),
            None
        );
        // A later job without a new application password keeps the old one.
        store
            .remember_site(site, "admin", "right-pw", None, 2)
            .await
            .unwrap();
        assert!(store
            .site_app_password(site, "admin", "right-pw")
            .await
            .unwrap()
            .is_some());
        store.forget_site_password(site, "admin").await.unwrap();
        assert_eq!(
            store
                .site_app_password(site, "admin", "right-pw")
                .await
                .unwrap(),
            None
        );
        let raw: String = store
            .read(|c| Ok(c.query_row("SELECT password_hash FROM sites", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert!(
            !raw.contains("right-pw"),
            "only a salted hash of the login password is kept"
        );
    }

    #[tokio::test]
    async fn an_ended_job_keeps_no_password_of_its_request() {
        let (_dir, store) = open_temp();
        let request = r#"{"source_url":"https://a.example","source_username":"admin","source_password":"hunter2","customer_id":"c"}"#;
        for (id, clone, end) in [
            ("job-f", "f", "fail"),
            ("job-c", "c", "cancel"),
            ("job-d", "d", "complete"),
        ] {
            let mut job = clone_job(id, clone, 1);
            job.request_json = request.into();
            store.create_job(job).await.unwrap();
            match end {
                "fail" => {
                    store.start_next_job(2).await.unwrap().unwrap();
                    store.fail_job(id, "x", "failed".into(), 3).await.unwrap();
                }
                "cancel" => {
                    store.cancel_job(id, 3).await.unwrap();
                }
                _ => {
                    let started = store.start_next_job(2).await.unwrap().unwrap();
                    let row = store.clone_for_job(&started.id).await.unwrap().unwrap().id;
                    store
                        .complete_clone_job(id, row, claim("http://a"), 3, |_| {})
                        .await
                        .unwrap()
                        .unwrap();
                }
            }
            let row = store.job(id).await.unwrap().unwrap();
            assert!(
                !row.request_json.contains("hunter2"),
                "{end}: {}",
                row.request_json
            );
            assert!(
                row.request_json.contains("\"source_username\":\"admin\""),
                "{end}: {}",
                row.request_json
            );
        }
    }

    pub(crate) fn clone_job(job_id: &str, clone_id: &str, now: i64) -> NewJob {
        NewJob {
            job_id: job_id.into(),
            job_type: JobType::Clone,
            request_json: r#"{"source_url":"https://a.example/","source_username":"admin","source_password":"source-pw"}"#.into(),
            clone: Some(NewClone {
                clone_id: clone_id.into(),
                source_url: "https://a.example".into(),
                clone_url: format!("http://{clone_id}.localhost:8080"),
                clone_host: format!("{clone_id}.localhost:8080"),
                ttl_minutes: 30,
            }),
            idempotency: None,
            max_queued: 100,
            now,
        }
    }

    pub(crate) fn claim(agent: &str) -> ClaimOutcome {
        ClaimOutcome {
            agent: agent.into(),
            node: "node-a".into(),
            pod_id: "cp-1".into(),
            endpoint: "http://127.0.0.1:1".into(),
            path: ClonePath::Warm,
            username: "admin".into(),
            password: "pw".into(),
            magic_login_url: None,
        }
    }

    #[tokio::test]
    async fn a_live_clone_name_cannot_be_taken_twice_but_can_be_reused_once_released() {
        let (_dir, store) = open_temp();
        store
            .create_job(clone_job("job-1", "shop", 1))
            .await
            .unwrap();
        let err = store
            .create_job(clone_job("job-2", "shop", 2))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::CloneNameTaken { .. }), "{err}");
        // The refused job left nothing behind.
        assert!(store.job("job-2").await.unwrap().is_none());

        let job = store.start_next_job(3).await.unwrap().unwrap();
        let clone = store.clone_for_job(&job.id).await.unwrap().unwrap();
        store
            .complete_clone_job(&job.id, clone.id, claim("a"), 4, |_| {})
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            store.end_clone("shop", 5).await.unwrap(),
            EndOutcome::Releasing(_)
        ));
        assert!(store.finish_release(clone.id, 6).await.unwrap());
        store
            .create_job(clone_job("job-3", "shop", 7))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_ready_hook_sees_the_ready_clone_only_when_the_job_completes() {
        let (_dir, store) = open_temp();
        store.create_job(clone_job("job-1", "a", 1)).await.unwrap();
        let job = store.start_next_job(1).await.unwrap().unwrap();
        let clone = store.clone_for_job(&job.id).await.unwrap().unwrap();
        type Seen = Arc<Mutex<Vec<(CloneStatus, Option<String>)>>>;
        let seen: Seen = Arc::default();
        let record = |seen: &Seen| {
            let seen = seen.clone();
            move |c: &CloneRow| seen.lock().unwrap().push((c.status, c.endpoint.clone()))
        };
        store
            .complete_clone_job(&job.id, clone.id, claim("x"), 2, record(&seen))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(CloneStatus::Ready, Some(claim("x").endpoint))]
        );
        // A second completion of the same job changes nothing and calls nothing.
        assert!(store
            .complete_clone_job(&job.id, clone.id, claim("y"), 3, record(&seen))
            .await
            .unwrap()
            .is_none());
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_late_progress_note_never_puts_an_older_step_over_a_newer_one() {
        let (_dir, store) = open_temp();
        store.create_job(clone_job("job-1", "a", 1)).await.unwrap();
        store.start_next_job(10).await.unwrap().unwrap();
        store
            .note_progress("job-1", 15, "Logging in".into(), 20)
            .await
            .unwrap();
        assert_eq!(
            store.job("job-1").await.unwrap().unwrap().message,
            "Logging in"
        );
        store
            .set_progress("job-1", 30, "Exporting".into(), 40)
            .await
            .unwrap();
        // A note made before the export step but written after it is dropped.
        store
            .note_progress("job-1", 15, "Logged in".into(), 30)
            .await
            .unwrap();
        let job = store.job("job-1").await.unwrap().unwrap();
        assert_eq!((job.progress, job.message.as_str()), (30, "Exporting"));
        store
            .note_progress("job-1", 35, "Exported 1 MB".into(), 50)
            .await
            .unwrap();
        let job = store.job("job-1").await.unwrap().unwrap();
        assert_eq!((job.progress, job.message.as_str()), (35, "Exported 1 MB"));
    }

    #[tokio::test]
    async fn the_queue_limit_refuses_new_jobs() {
        let (_dir, store) = open_temp();
        let mut job = clone_job("job-1", "a", 1);
        job.max_queued = 1;
        store.create_job(job).await.unwrap();
        let mut job = clone_job("job-2", "b", 1);
        job.max_queued = 1;
        assert!(matches!(
            store.create_job(job).await,
            Err(StoreError::QueueFull { limit: 1 })
        ));
    }

    #[tokio::test]
    async fn an_idempotency_key_replays_the_same_job_and_refuses_a_different_body() {
        let (_dir, store) = open_temp();
        let with_key = |job_id: &str, clone_id: &str, hash: &str| {
            let mut job = clone_job(job_id, clone_id, 1);
            job.idempotency = Some(IdempotencyKey {
                route: "clone",
                key: "k1".into(),
                request_hash: hash.into(),
            });
            job
        };
        let Created::New(first) = store
            .create_job(with_key("job-1", "a", "h1"))
            .await
            .unwrap()
        else {
            panic!("first use must create");
        };
        let Created::Replayed(again) = store
            .create_job(with_key("job-2", "a", "h1"))
            .await
            .unwrap()
        else {
            panic!("same key and body must replay");
        };
        assert_eq!(again.id, first.id);
        assert!(store.job("job-2").await.unwrap().is_none());
        assert!(matches!(
            store.create_job(with_key("job-3", "b", "h2")).await,
            Err(StoreError::IdempotencyMismatch)
        ));
    }

    #[tokio::test]
    async fn recovery_resumes_clone_jobs_with_attempts_left_and_fails_the_rest() {
        let (_dir, store) = open_temp();
        store.create_job(clone_job("job-1", "a", 1)).await.unwrap();
        store.create_job(clone_job("job-2", "b", 2)).await.unwrap();
        let mut restore = clone_job("job-3", "c", 3);
        restore.job_type = JobType::Restore;
        restore.clone = None;
        store.create_job(restore).await.unwrap();
        for _ in 0..3 {
            store.start_next_job(10).await.unwrap().unwrap();
        }
        // job-2 has used its last attempt.
        store
            .execute_sql("UPDATE jobs SET attempts = 3 WHERE id = 'job-2'")
            .await
            .unwrap();
        let clone_b = store.clone_for_job("job-2").await.unwrap().unwrap();
        store
            .record_claim_attempt(clone_b.id, "http://agent", false)
            .await
            .unwrap();

        let outcome = store.recover_interrupted(3, 20).await.unwrap();
        assert!(outcome.contains(&Recovered::Resumed("job-1".into())));
        assert!(outcome.contains(&Recovered::Failed("job-2".into())));
        assert!(outcome.contains(&Recovered::Failed("job-3".into())));
        let counts = store.job_counts().await.unwrap();
        assert!(counts.contains(&(JobState::Running, 0)), "{counts:?}");
        let failed = store.job("job-2").await.unwrap().unwrap();
        assert_eq!(failed.state, JobState::Failed);
        assert!(failed.error.unwrap().contains("coordinator stopped"));
        // Its clone may hold a pod on the agent it asked: that pod gets released.
        let clone_b = store.clone_for_job("job-2").await.unwrap().unwrap();
        assert_eq!(clone_b.status, CloneStatus::Releasing);
        let clone_a = store.clone_for_job("job-1").await.unwrap().unwrap();
        assert_eq!(clone_a.status, CloneStatus::Provisioning);
    }

    #[tokio::test]
    async fn expiry_hands_each_clone_out_exactly_once() {
        let (_dir, store) = open_temp();
        store.create_job(clone_job("job-1", "a", 1)).await.unwrap();
        let job = store.start_next_job(1).await.unwrap().unwrap();
        let clone = store.clone_for_job(&job.id).await.unwrap().unwrap();
        store
            .complete_clone_job(&job.id, clone.id, claim("x"), 1, |_| {})
            .await
            .unwrap();
        let later = 1 + 31 * 60_000;
        let (a, b) = tokio::join!(store.expire_due(later), store.expire_due(later));
        assert_eq!(a.unwrap().len() + b.unwrap().len(), 1);
        assert!(store.expire_due(later).await.unwrap().is_empty());
        // A DELETE racing with expiry does not release it again.
        assert!(matches!(
            store.end_clone("a", later).await.unwrap(),
            EndOutcome::AlreadyReleasing(_)
        ));
    }

    #[tokio::test]
    async fn only_pending_jobs_can_be_cancelled() {
        let (_dir, store) = open_temp();
        store.create_job(clone_job("job-1", "a", 1)).await.unwrap();
        store.create_job(clone_job("job-2", "b", 2)).await.unwrap();
        store.start_next_job(5).await.unwrap();
        assert!(matches!(
            store.cancel_job("job-1", 6).await.unwrap(),
            CancelOutcome::NotCancellable(_)
        ));
        let CancelOutcome::Cancelled(job) = store.cancel_job("job-2", 6).await.unwrap() else {
            panic!("pending job must cancel");
        };
        assert_eq!(job.state, JobState::Cancelled);
        let clone = store.clone_for_job("job-2").await.unwrap().unwrap();
        assert_eq!(clone.status, CloneStatus::Released);
        assert_eq!(clone.end_reason.as_deref(), Some("cancelled"));
        assert!(matches!(
            store.cancel_job("job-9", 6).await.unwrap(),
            CancelOutcome::NotFound
        ));
    }

    #[tokio::test]
    async fn extending_adds_time_up_to_the_limit() {
        let (_dir, store) = open_temp();
        store.create_job(clone_job("job-1", "a", 0)).await.unwrap();
        let job = store.start_next_job(0).await.unwrap().unwrap();
        let clone = store.clone_for_job(&job.id).await.unwrap().unwrap();
        store
            .complete_clone_job(&job.id, clone.id, claim("x"), 0, |_| {})
            .await
            .unwrap();
        let ExtendOutcome::Extended(clone) = store.extend_clone("a", 60, 1440, 0).await.unwrap()
        else {
            panic!("extend must work");
        };
        assert_eq!(clone.expires_at, Some(90 * 60_000));
        assert_eq!(clone.ttl_minutes, 90);
        assert!(matches!(
            store.extend_clone("a", 1400, 1440, 0).await.unwrap(),
            ExtendOutcome::TooLong {
                remaining_minutes: 1490
            }
        ));
        assert!(matches!(
            store.extend_clone("nope", 10, 1440, 0).await.unwrap(),
            ExtendOutcome::NotLive
        ));
    }
}
