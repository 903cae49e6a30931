//! The agent's durable state: pods, their states and claims, and a bounded event log, in one
//! SQLite file (WAL). Every state transition and its event are written in one transaction.

use crate::secrets::Secret;
use clonepool_common::agent_api::{ClaimPath, CloneScheme, PodSummary};
use clonepool_common::ids::{CloneId, NodeName, PodId};
use clonepool_common::pod::PodState;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Events kept in the log; older ones are dropped.
pub const EVENT_LOG_CAPACITY: i64 = 1000;

/// The prefix of `reason` for a pod whose clone lost it (a container died while it served).
pub const LOST_PREFIX: &str = "lost: ";

/// 2: `pods.credentials_applied` (two-phase claims).
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pods (
    id              TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    clone_id        TEXT UNIQUE,
    clone_host      TEXT,
    admin_user      TEXT,
    admin_password  TEXT,
    endpoint        TEXT,
    since           TEXT NOT NULL,
    reason          TEXT,
    lost            INTEGER NOT NULL DEFAULT 0,
    reset_attempts  INTEGER NOT NULL DEFAULT 0,
    reserved_for    TEXT,
    fingerprint     TEXT,
    claim_path      TEXT,
    created_at      TEXT NOT NULL,
    credentials_applied INTEGER NOT NULL DEFAULT 1,
    clone_scheme    TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    pod_id   TEXT,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the agent's data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is unreadable or corrupt ({source}); move it away to start with an empty pool (its pods become orphans and are removed)")]
    Unreadable {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state file {path} was written by a newer agent (schema {found}, this agent knows {SCHEMA_VERSION})")]
    TooNew { path: PathBuf, found: i64 },
    #[error("state file {path} holds a bad row for pod {pod:?}: {detail}")]
    BadRow {
        path: PathBuf,
        pod: String,
        detail: String,
    },
    #[error("state file {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("pod {0} is not in the state file")]
    NoSuchPod(PodId),
    #[error("pod {pod} is {state}, not {expected}")]
    WrongState {
        pod: PodId,
        state: PodState,
        expected: String,
    },
}

/// One pod as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    pub id: PodId,
    pub state: PodState,
    pub clone_id: Option<CloneId>,
    pub clone_host: Option<String>,
    pub admin_user: Option<String>,
    /// Kept only while the pod is assigned to a clone, so a repeated claim gets the same answer.
    pub admin_password: Option<Secret>,
    pub endpoint: Option<String>,
    pub since: String,
    pub reason: Option<String>,
    /// A container died while the pod served a clone (or vanished while the agent was down).
    pub lost: bool,
    pub reset_attempts: u32,
    /// Cold path: the STARTING pod was created for this clone and goes to it, not to the pool.
    pub reserved_for: Option<CloneId>,
    /// The pristine fingerprint (JSON of [`crate::fingerprint::Fingerprint`]).
    pub fingerprint: Option<String>,
    pub created_at: String,
    /// How the current claim was served.
    pub claim_path: Option<ClaimPath>,
    /// The claim's site URL and admin password are in the pod. A claim is saved first (with
    /// this false) and applied second; a repeated claim that finds it false applies them again
    /// before answering (the agent stopped in between).
    pub credentials_applied: bool,
    /// The scheme of the clone's URL (with `clone_host`).
    pub clone_scheme: CloneScheme,
}

impl PodRecord {
    /// `{scheme}://{clone_host}`: WordPress's siteurl/home while the pod serves a clone.
    pub fn site_url(&self) -> Option<String> {
        self.clone_host
            .as_deref()
            .map(|host| self.clone_scheme.site_url(host))
    }

    pub fn summary(&self, node: &NodeName) -> PodSummary {
        PodSummary {
            pod_id: self.id.clone(),
            node: node.clone(),
            state: self.state,
            clone_id: self.clone_id.clone(),
            endpoint: self.endpoint.clone(),
            since: self.since.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: String,
    pub pod_id: Option<String>,
    pub kind: String,
    pub message: String,
}

/// A clone's claim on a pod: who holds it and the credentials it was given.
#[derive(Debug, Clone, Copy)]
pub struct Assignment<'a> {
    pub clone: &'a CloneId,
    pub clone_host: &'a str,
    pub clone_scheme: CloneScheme,
    pub admin_user: &'a str,
    pub admin_password: &'a Secret,
}

/// What a claim transaction found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The clone already holds this pod (the claim is a repeat).
    Existing(PodRecord),
    /// A WARM pod was assigned to the clone.
    Claimed(PodRecord),
    /// No WARM pod is free.
    NoWarmPod,
}

/// Now as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// The SQLite state store. Calls are short and synchronous; the connection is shared behind a mutex.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const POD_COLUMNS: &str = "id, state, clone_id, clone_host, admin_user, admin_password, endpoint, since, reason, lost, reset_attempts, reserved_for, fingerprint, created_at, claim_path, credentials_applied, clone_scheme";
/// The same without the (large) fingerprint, for listings.
const POD_COLUMNS_LIST: &str = "id, state, clone_id, clone_host, admin_user, admin_password, endpoint, since, reason, lost, reset_attempts, reserved_for, NULL, created_at, claim_path, credentials_applied, clone_scheme";

/// Creates `dir` (mode 0700) when missing.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating when missing) the state file at `path`, mode 0600, and checks it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                ensure_private_dir(dir)?;
            }
        }
        let unreadable = |source| StoreError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        // Secrets live in this file while pods are assigned: owner only, from its creation on
        // (SQLite gives the -wal and -shm files the main file's mode).
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            return Err(unreadable(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(e.to_string()),
            )));
        }
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        let conn = Connection::open(path).map_err(unreadable)?;
        // The first statements fail on a file that is not a database.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(unreadable)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(unreadable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "state file is not in WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(unreadable)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(unreadable)?;
        if check != "ok" {
            return Err(unreadable(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(unreadable)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
            });
        }
        conn.execute_batch(SCHEMA).map_err(unreadable)?;
        // Schema 1 → 2: claims saved by an older agent were applied before it answered them.
        let has_applied: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('pods') WHERE name = 'credentials_applied'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(unreadable)?
            > 0;
        if !has_applied {
            conn.execute_batch(
                "ALTER TABLE pods ADD COLUMN credentials_applied INTEGER NOT NULL DEFAULT 1",
            )
            .map_err(unreadable)?;
        }
        // Schema 2 → 3: clones of older agents were all http (NULL reads as http).
        let has_scheme: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('pods') WHERE name = 'clone_scheme'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(unreadable)?
            > 0;
        if !has_scheme {
            conn.execute_batch("ALTER TABLE pods ADD COLUMN clone_scheme TEXT")
                .map_err(unreadable)?;
        }
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(unreadable)?;
        for file in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(file);
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        }
        let store = Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        };
        // Every stored row must parse, so a damaged file is caught at start, not mid-claim.
        store.list()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn with_tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(out)
    }

    fn parse_row(&self, row: &Row<'_>) -> rusqlite::Result<Result<PodRecord, StoreError>> {
        let id: String = row.get(0)?;
        let state: String = row.get(1)?;
        let clone_id: Option<String> = row.get(2)?;
        let reserved_for: Option<String> = row.get(11)?;
        let bad = |detail: String| StoreError::BadRow {
            path: self.path.clone(),
            pod: id.clone(),
            detail,
        };
        let parsed = (|| {
            let pod_id: PodId = id.parse().map_err(|e| bad(format!("{e}")))?;
            let state: PodState = state.parse().map_err(|e| bad(format!("{e}")))?;
            let clone_id = clone_id
                .map(|c| c.parse::<CloneId>())
                .transpose()
                .map_err(|e| bad(format!("{e}")))?;
            let reserved_for = reserved_for
                .map(|c| c.parse::<CloneId>())
                .transpose()
                .map_err(|e| bad(format!("{e}")))?;
            Ok((pod_id, state, clone_id, reserved_for))
        })();
        let (pod_id, state, clone_id, reserved_for) = match parsed {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(PodRecord {
            id: pod_id,
            state,
            clone_id,
            clone_host: row.get(3)?,
            admin_user: row.get(4)?,
            admin_password: row.get::<_, Option<String>>(5)?.map(Secret::new),
            endpoint: row.get(6)?,
            since: row.get(7)?,
            reason: row.get(8)?,
            lost: row.get::<_, i64>(9)? != 0,
            reset_attempts: row.get::<_, i64>(10)?.max(0) as u32,
            reserved_for,
            fingerprint: row.get(12)?,
            created_at: row.get(13)?,
            claim_path: match row.get::<_, Option<String>>(14)?.as_deref() {
                Some("cold") => Some(ClaimPath::Cold),
                Some(_) => Some(ClaimPath::Warm),
                None => None,
            },
            credentials_applied: row.get::<_, i64>(15)? != 0,
            clone_scheme: match row.get::<_, Option<String>>(16)?.as_deref() {
                Some("https") => CloneScheme::Https,
                _ => CloneScheme::Http,
            },
        }))
    }

    fn get_in(&self, tx: &Connection, id: &PodId) -> Result<Option<PodRecord>, StoreError> {
        let rec = tx
            .query_row(
                &format!("SELECT {POD_COLUMNS} FROM pods WHERE id = ?1"),
                [id.as_str()],
                |r| self.parse_row(r),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        rec.transpose()
    }

    fn must_get(&self, tx: &Connection, id: &PodId) -> Result<PodRecord, StoreError> {
        self.get_in(tx, id)?
            .ok_or_else(|| StoreError::NoSuchPod(id.clone()))
    }

    fn event_in(
        &self,
        tx: &Connection,
        pod: Option<&PodId>,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO events (at, pod_id, kind, message) VALUES (?1, ?2, ?3, ?4)",
            params![now_rfc3339(), pod.map(|p| p.as_str()), kind, message],
        )
        .map_err(|e| self.sql(e))?;
        tx.execute(
            "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1",
            [EVENT_LOG_CAPACITY],
        )
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    fn set_state_in(
        &self,
        tx: &Connection,
        id: &PodId,
        state: PodState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE pods SET state = ?2, since = ?3, reason = ?4 WHERE id = ?1",
            params![id.as_str(), state.as_str(), now_rfc3339(), reason],
        )
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Records an event that is not a state change.
    pub fn add_event(
        &self,
        pod: Option<&PodId>,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        self.with_tx(|tx| self.event_in(tx, pod, kind, message))
    }

    /// The newest `limit` events, oldest first.
    pub fn events(&self, limit: u32) -> Result<Vec<Event>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn
            .prepare("SELECT id, at, pod_id, kind, message FROM events ORDER BY id DESC LIMIT ?1")
            .map_err(|e| self.sql(e))?;
        let mut out: Vec<Event> = stmt
            .query_map([limit], |r| {
                Ok(Event {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    pod_id: r.get(2)?,
                    kind: r.get(3)?,
                    message: r.get(4)?,
                })
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        out.reverse();
        Ok(out)
    }

    pub fn get(&self, id: &PodId) -> Result<Option<PodRecord>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        self.get_in(&conn, id)
    }

    /// Every pod, oldest first (without their fingerprints: see [`Store::get`]).
    pub fn list(&self) -> Result<Vec<PodRecord>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {POD_COLUMNS_LIST} FROM pods ORDER BY created_at, id"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| self.parse_row(r))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(|e| self.sql(e))??);
        }
        Ok(out)
    }

    /// Pods by state.
    pub fn counts(&self) -> Result<BTreeMap<&'static str, u32>, StoreError> {
        let mut counts: BTreeMap<&'static str, u32> =
            PodState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for pod in self.list()? {
            *counts.entry(pod.state.as_str()).or_default() += 1;
        }
        Ok(counts)
    }

    pub fn find_by_clone(&self, clone: &CloneId) -> Result<Option<PodRecord>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        self.find_by_clone_in(&conn, clone)
    }

    fn find_by_clone_in(
        &self,
        tx: &Connection,
        clone: &CloneId,
    ) -> Result<Option<PodRecord>, StoreError> {
        let rec = tx
            .query_row(
                &format!("SELECT {POD_COLUMNS} FROM pods WHERE clone_id = ?1 OR reserved_for = ?1 ORDER BY clone_id IS NULL LIMIT 1"),
                [clone.as_str()],
                |r| self.parse_row(r),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        rec.transpose()
    }

    /// A new pod for the pool, STARTING.
    pub fn insert_starting(&self, id: &PodId) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            let now = now_rfc3339();
            tx.execute(
                "INSERT INTO pods (id, state, since, created_at) VALUES (?1, ?2, ?3, ?3)",
                params![id.as_str(), PodState::Starting.as_str(), now],
            )
            .map_err(|e| self.sql(e))?;
            self.event_in(tx, Some(id), "created", "creating pod")
        })
    }

    /// STARTING or RESETTING → WARM, with the pod's endpoint and (after provisioning) its
    /// pristine fingerprint. Clears the clone, credentials and reason.
    pub fn mark_warm(
        &self,
        id: &PodId,
        endpoint: &str,
        fingerprint: Option<&str>,
        message: &str,
    ) -> Result<PodRecord, StoreError> {
        self.with_tx(|tx| {
            let pod = self.must_get(tx, id)?;
            if !matches!(pod.state, PodState::Starting | PodState::Resetting) {
                return Err(StoreError::WrongState {
                    pod: id.clone(),
                    state: pod.state,
                    expected: "STARTING or RESETTING".into(),
                });
            }
            tx.execute(
                "UPDATE pods SET state = ?2, since = ?3, reason = NULL, endpoint = ?4,
                     fingerprint = COALESCE(?5, fingerprint), clone_id = NULL, clone_host = NULL,
                     clone_scheme = NULL, admin_user = NULL, admin_password = NULL, reset_attempts = 0, reserved_for = NULL,
                     lost = 0, claim_path = NULL
                 WHERE id = ?1",
                params![id.as_str(), PodState::Warm.as_str(), now_rfc3339(), endpoint, fingerprint],
            )
            .map_err(|e| self.sql(e))?;
            self.event_in(tx, Some(id), "warm", message)?;
            self.must_get(tx, id)
        })
    }

    /// The atomic claim: a repeat for `clone` returns its pod; otherwise the oldest WARM pod is
    /// assigned to `clone` with the given credentials, in one transaction.
    pub fn claim(&self, a: &Assignment<'_>) -> Result<ClaimOutcome, StoreError> {
        let clone = a.clone;
        self.with_tx(|tx| {
            if let Some(existing) = self.find_by_clone_in(tx, clone)? {
                return Ok(ClaimOutcome::Existing(existing));
            }
            let warm: Option<String> = tx
                .query_row(
                    "SELECT id FROM pods WHERE state = ?1 AND reserved_for IS NULL ORDER BY since, id LIMIT 1",
                    [PodState::Warm.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.sql(e))?;
            let Some(id) = warm else {
                return Ok(ClaimOutcome::NoWarmPod);
            };
            let id: PodId = id.parse().map_err(|e| StoreError::BadRow {
                path: self.path.clone(),
                pod: id.clone(),
                detail: format!("{e}"),
            })?;
            self.assign_in(tx, &id, a, ClaimPath::Warm, false)?;
            self.event_in(tx, Some(&id), "claimed", &format!("assigned to clone {clone} (warm)"))?;
            Ok(ClaimOutcome::Claimed(self.must_get(tx, &id)?))
        })
    }

    /// Writes the claim. `applied`: the settings are already in the pod (cold path).
    fn assign_in(
        &self,
        tx: &Connection,
        id: &PodId,
        a: &Assignment<'_>,
        path: ClaimPath,
        applied: bool,
    ) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE pods SET state = ?2, since = ?3, reason = NULL, clone_id = ?4, clone_host = ?5,
                 admin_user = ?6, admin_password = ?7, reserved_for = NULL, claim_path = ?8,
                 credentials_applied = ?9, clone_scheme = ?10
             WHERE id = ?1",
            params![
                id.as_str(),
                PodState::Assigned.as_str(),
                now_rfc3339(),
                a.clone.as_str(),
                a.clone_host,
                a.admin_user,
                a.admin_password.expose(),
                match path {
                    ClaimPath::Warm => "warm",
                    ClaimPath::Cold => "cold",
                },
                applied as i64,
                a.clone_scheme.as_str()
            ],
        )
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Cold path: the STARTING pod reserved for `clone` is provisioned; assign it.
    pub fn assign_reserved(
        &self,
        id: &PodId,
        a: &Assignment<'_>,
        endpoint: &str,
        fingerprint: &str,
    ) -> Result<PodRecord, StoreError> {
        let clone = a.clone;
        self.with_tx(|tx| {
            let pod = self.must_get(tx, id)?;
            if pod.state != PodState::Starting || pod.reserved_for.as_ref() != Some(clone) {
                return Err(StoreError::WrongState {
                    pod: id.clone(),
                    state: pod.state,
                    expected: format!("STARTING for clone {clone}"),
                });
            }
            tx.execute(
                "UPDATE pods SET endpoint = ?2, fingerprint = ?3 WHERE id = ?1",
                params![id.as_str(), endpoint, fingerprint],
            )
            .map_err(|e| self.sql(e))?;
            self.assign_in(tx, id, a, ClaimPath::Cold, true)?;
            self.event_in(
                tx,
                Some(id),
                "claimed",
                &format!("assigned to clone {clone} (cold)"),
            )?;
            self.must_get(tx, id)
        })
    }

    /// ASSIGNED → READY for the pod of `clone`.
    pub fn mark_ready(&self, clone: &CloneId) -> Result<Option<PodRecord>, StoreError> {
        self.with_tx(|tx| {
            let Some(pod) = self.find_by_clone_in(tx, clone)? else {
                return Ok(None);
            };
            match pod.state {
                PodState::Ready => Ok(Some(pod)),
                PodState::Assigned => {
                    self.set_state_in(tx, &pod.id, PodState::Ready, None)?;
                    self.event_in(
                        tx,
                        Some(&pod.id),
                        "ready",
                        &format!("serving clone {clone}"),
                    )?;
                    Ok(Some(self.must_get(tx, &pod.id)?))
                }
                state => Err(StoreError::WrongState {
                    pod: pod.id,
                    state,
                    expected: "ASSIGNED".into(),
                }),
            }
        })
    }

    /// The claim of `clone` on pod `id` is in the pod now (second phase of a warm claim).
    /// Returns the record, or `None` when the pod no longer holds that clone.
    pub fn mark_credentials_applied(
        &self,
        id: &PodId,
        clone: &CloneId,
    ) -> Result<Option<PodRecord>, StoreError> {
        self.with_tx(|tx| {
            let changed = tx
                .execute(
                    "UPDATE pods SET credentials_applied = 1 WHERE id = ?1 AND clone_id = ?2",
                    params![id.as_str(), clone.as_str()],
                )
                .map_err(|e| self.sql(e))?;
            if changed == 0 {
                return Ok(None);
            }
            self.get_in(tx, id)
        })
    }

    /// The clone's site was imported: its administrator and password are now these, so a
    /// repeated claim answers credentials that work in the pod.
    pub fn set_clone_credentials(
        &self,
        id: &PodId,
        clone: &CloneId,
        admin_user: &str,
        admin_password: &Secret,
    ) -> Result<bool, StoreError> {
        self.with_tx(|tx| {
            let changed = tx
                .execute(
                    "UPDATE pods SET admin_user = ?3, admin_password = ?4 WHERE id = ?1 AND clone_id = ?2",
                    params![id.as_str(), clone.as_str(), admin_user, admin_password.expose()],
                )
                .map_err(|e| self.sql(e))?;
            Ok(changed == 1)
        })
    }

    /// A claim that could not be applied because the runtime went away: ASSIGNED → RESETTING,
    /// and the clone lets go of the pod (so it can claim again). The pod's settings may be half
    /// applied, so it is reset before it is WARM again. Does not count a reset attempt.
    pub fn abort_claim(&self, id: &PodId, message: &str) -> Result<PodRecord, StoreError> {
        self.with_tx(|tx| {
            let pod = self.must_get(tx, id)?;
            if pod.state != PodState::Assigned {
                return Err(StoreError::WrongState {
                    pod: id.clone(),
                    state: pod.state,
                    expected: "ASSIGNED".into(),
                });
            }
            tx.execute(
                "UPDATE pods SET state = ?2, since = ?3, reason = NULL, clone_id = NULL,
                     clone_host = NULL, clone_scheme = NULL, admin_password = NULL,
                     claim_path = NULL, credentials_applied = 1
                 WHERE id = ?1",
                params![id.as_str(), PodState::Resetting.as_str(), now_rfc3339()],
            )
            .map_err(|e| self.sql(e))?;
            self.event_in(tx, Some(id), "resetting", message)?;
            self.must_get(tx, id)
        })
    }

    /// Any of `from` → RESETTING. Forgets the admin password at once (the clone keeps its id on
    /// the row until the reset ends, so a repeated release is answered). Counts the attempt.
    pub fn begin_reset(
        &self,
        id: &PodId,
        from: &[PodState],
        message: &str,
    ) -> Result<PodRecord, StoreError> {
        self.with_tx(|tx| {
            let pod = self.must_get(tx, id)?;
            if !from.contains(&pod.state) {
                return Err(StoreError::WrongState {
                    pod: id.clone(),
                    state: pod.state,
                    expected: from
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" or "),
                });
            }
            tx.execute(
                "UPDATE pods SET state = ?2, since = ?3, reason = NULL, admin_password = NULL,
                     reset_attempts = reset_attempts + 1
                 WHERE id = ?1",
                params![id.as_str(), PodState::Resetting.as_str(), now_rfc3339()],
            )
            .map_err(|e| self.sql(e))?;
            self.event_in(tx, Some(id), "resetting", message)?;
            self.must_get(tx, id)
        })
    }

    /// → QUARANTINED with a reason, when the pod is in one of `from` (any state when empty).
    /// `lost` marks a pod whose clone lost it. Forgets the password. `None` when the pod is gone
    /// or in another state.
    pub fn quarantine(
        &self,
        id: &PodId,
        from: &[PodState],
        reason: &str,
        lost: bool,
    ) -> Result<Option<PodRecord>, StoreError> {
        self.with_tx(|tx| {
            let Some(pod) = self.get_in(tx, id)? else {
                return Ok(None);
            };
            if !from.is_empty() && !from.contains(&pod.state) {
                return Ok(None);
            }
            let reason = if lost && !reason.starts_with(LOST_PREFIX) {
                format!("{LOST_PREFIX}{reason}")
            } else {
                reason.to_string()
            };
            // A lost pod stays with its clone (so the clone can be told); any other quarantined
            // pod is on its way out and frees the clone id for another claim.
            tx.execute(
                "UPDATE pods SET state = ?2, since = ?3, reason = ?4, lost = ?5, admin_password = NULL,
                     clone_id = CASE WHEN ?5 THEN clone_id ELSE NULL END,
                     clone_host = CASE WHEN ?5 THEN clone_host ELSE NULL END,
                     reserved_for = NULL
                 WHERE id = ?1",
                params![id.as_str(), PodState::Quarantined.as_str(), now_rfc3339(), reason, lost as i64],
            )
            .map_err(|e| self.sql(e))?;
            self.event_in(tx, Some(id), if lost { "lost" } else { "quarantined" }, &reason)?;
            Ok(Some(self.must_get(tx, id)?))
        })
    }

    /// Forgets a pod (its containers are gone), when it is in one of `from` (any state when
    /// empty). Returns whether a row was removed.
    pub fn delete(&self, id: &PodId, from: &[PodState], message: &str) -> Result<bool, StoreError> {
        self.with_tx(|tx| {
            let Some(pod) = self.get_in(tx, id)? else {
                return Ok(false);
            };
            if !from.is_empty() && !from.contains(&pod.state) {
                return Ok(false);
            }
            tx.execute("DELETE FROM pods WHERE id = ?1", [id.as_str()])
                .map_err(|e| self.sql(e))?;
            self.event_in(tx, Some(id), "removed", message)?;
            Ok(true)
        })
    }

    /// Cold path: a new STARTING pod reserved for `clone`, if the node holds fewer than `max`
    /// pods (checked in the same transaction). Returns whether it was inserted.
    pub fn insert_reserved_if_room(
        &self,
        id: &PodId,
        clone: &CloneId,
        max: u32,
    ) -> Result<bool, StoreError> {
        self.with_tx(|tx| {
            let total: i64 = tx
                .query_row("SELECT COUNT(*) FROM pods", [], |r| r.get(0))
                .map_err(|e| self.sql(e))?;
            if total >= i64::from(max) {
                return Ok(false);
            }
            let now = now_rfc3339();
            tx.execute(
                "INSERT INTO pods (id, state, since, created_at, reserved_for) VALUES (?1, ?2, ?3, ?3, ?4)",
                params![id.as_str(), PodState::Starting.as_str(), now, clone.as_str()],
            )
            .map_err(|e| self.sql(e))?;
            self.event_in(tx, Some(id), "created", &format!("creating pod for clone {clone} (cold path)"))?;
            Ok(true)
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map_err(|e| self.sql(e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(n: u32) -> PodId {
        format!("cp-{n:04x}").parse().unwrap()
    }

    fn clone(s: &str) -> CloneId {
        s.parse().unwrap()
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.sqlite")).unwrap();
        (dir, store)
    }

    #[test]
    fn a_claim_assigns_the_oldest_warm_pod_and_a_repeat_returns_the_same_pod() {
        let (_d, s) = open();
        for n in 1..=2 {
            s.insert_starting(&pod(n)).unwrap();
            s.mark_warm(&pod(n), "http://10.0.0.1:80", Some("{}"), "ok")
                .unwrap();
        }
        let pw = Secret::new("pw1");
        let ClaimOutcome::Claimed(first) = s
            .claim(&Assignment {
                clone: &clone("a"),
                clone_host: "a.test",
                clone_scheme: CloneScheme::Http,
                admin_user: "admin",
                admin_password: &pw,
            })
            .unwrap()
        else {
            panic!("expected a claim")
        };
        assert_eq!(first.id, pod(1));
        assert_eq!(first.state, PodState::Assigned);
        let again = s
            .claim(&Assignment {
                clone: &clone("a"),
                clone_host: "a.test",
                clone_scheme: CloneScheme::Http,
                admin_user: "admin",
                admin_password: &Secret::new("other"),
            })
            .unwrap();
        match again {
            ClaimOutcome::Existing(p) => {
                assert_eq!(p.id, pod(1));
                assert_eq!(p.admin_password, Some(pw.clone()));
            }
            other => panic!("{other:?}"),
        }
        let ClaimOutcome::Claimed(second) = s
            .claim(&Assignment {
                clone: &clone("b"),
                clone_host: "b.test",
                clone_scheme: CloneScheme::Http,
                admin_user: "admin",
                admin_password: &pw,
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(second.id, pod(2));
        assert_eq!(
            s.claim(&Assignment {
                clone: &clone("c"),
                clone_host: "c.test",
                clone_scheme: CloneScheme::Http,
                admin_user: "admin",
                admin_password: &pw
            })
            .unwrap(),
            ClaimOutcome::NoWarmPod
        );
    }

    #[test]
    fn the_admin_password_is_forgotten_when_the_reset_begins() {
        let (_d, s) = open();
        s.insert_starting(&pod(1)).unwrap();
        s.mark_warm(&pod(1), "http://x", Some("{}"), "ok").unwrap();
        s.claim(&Assignment {
            clone: &clone("a"),
            clone_host: "a.test",
            clone_scheme: CloneScheme::Http,
            admin_user: "admin",
            admin_password: &Secret::new("pw"),
        })
        .unwrap();
        let p = s
            .begin_reset(&pod(1), &[PodState::Assigned, PodState::Ready], "release")
            .unwrap();
        assert_eq!(p.state, PodState::Resetting);
        assert_eq!(p.admin_password, None);
        assert_eq!(p.reset_attempts, 1);
        let p = s.mark_warm(&pod(1), "http://x", None, "reset ok").unwrap();
        assert_eq!(p.clone_id, None);
        assert_eq!(p.fingerprint.as_deref(), Some("{}"));
    }

    #[test]
    fn the_event_log_keeps_only_the_newest_entries() {
        let (_d, s) = open();
        for i in 0..(EVENT_LOG_CAPACITY + 20) {
            s.add_event(None, "test", &format!("event {i}")).unwrap();
        }
        let all = s.events(5000).unwrap();
        assert_eq!(all.len() as i64, EVENT_LOG_CAPACITY);
        assert_eq!(
            all.last().unwrap().message,
            format!("event {}", EVENT_LOG_CAPACITY + 19)
        );
    }

    #[test]
    fn a_corrupt_state_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sqlite");
        std::fs::write(
            &path,
            b"this is not a database, just some bytes ".repeat(200),
        )
        .unwrap();
        let err = Store::open(&path).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(matches!(err, StoreError::Unreadable { .. }), "{text}");
    }

    #[test]
    fn the_state_file_is_private() {
        let (d, _s) = open();
        let mode = std::fs::metadata(d.path().join("agent.sqlite"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    fn warm_pod(s: &Store, n: u32) {
        s.insert_starting(&pod(n)).unwrap();
        s.mark_warm(&pod(n), "http://10.0.0.1:80", Some("{}"), "ok")
            .unwrap();
    }

    fn claim_for(s: &Store, c: &str, pw: &str) -> PodRecord {
        match s
            .claim(&Assignment {
                clone: &clone(c),
                clone_host: "c.test",
                clone_scheme: CloneScheme::Http,
                admin_user: "admin",
                admin_password: &Secret::new(pw),
            })
            .unwrap()
        {
            ClaimOutcome::Claimed(rec) | ClaimOutcome::Existing(rec) => rec,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_warm_claim_is_saved_unapplied_until_marked_and_the_flag_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sqlite");
        {
            let s = Store::open(&path).unwrap();
            warm_pod(&s, 1);
            let rec = claim_for(&s, "a", "pw");
            assert!(!rec.credentials_applied);
        }
        let s = Store::open(&path).unwrap();
        let rec = s.find_by_clone(&clone("a")).unwrap().unwrap();
        assert!(!rec.credentials_applied, "still unapplied after a restart");
        assert_eq!(rec.admin_password, Some(Secret::new("pw")));
        assert_eq!(
            s.mark_credentials_applied(&pod(1), &clone("other"))
                .unwrap(),
            None,
            "only for the clone that holds the pod"
        );
        let rec = s
            .mark_credentials_applied(&pod(1), &clone("a"))
            .unwrap()
            .unwrap();
        assert!(rec.credentials_applied);
    }

    #[test]
    fn an_aborted_claim_resets_the_pod_and_frees_the_clone() {
        let (_d, s) = open();
        warm_pod(&s, 1);
        claim_for(&s, "a", "pw");
        let rec = s.abort_claim(&pod(1), "runtime unreachable").unwrap();
        assert_eq!(rec.state, PodState::Resetting);
        assert_eq!((rec.clone_id, rec.admin_password), (None, None));
        assert_eq!(rec.reset_attempts, 0, "not counted as a failed reset");
        assert!(s.find_by_clone(&clone("a")).unwrap().is_none());
        assert!(matches!(
            s.abort_claim(&pod(1), "again"),
            Err(StoreError::WrongState { .. })
        ));
    }

    #[test]
    fn a_schema_1_state_file_is_upgraded_and_its_claims_count_as_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            let v1 = SCHEMA
                .replace(",\n    credentials_applied INTEGER NOT NULL DEFAULT 1", "")
                .replace(",\n    clone_scheme    TEXT", "");
            assert!(!v1.contains("credentials_applied"));
            assert!(!v1.contains("clone_scheme"));
            conn.execute_batch(&v1).unwrap();
            conn.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO pods (id, state, clone_id, clone_host, admin_user, admin_password,
                     endpoint, since, created_at, claim_path)
                 VALUES ('cp-0001', 'READY', 'old', 'old.test', 'admin', 'pw', 'http://x',
                     '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 'warm');",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let rec = s.get(&pod(1)).unwrap().unwrap();
        assert!(rec.credentials_applied);
        assert_eq!(rec.state, PodState::Ready);
        assert_eq!(rec.site_url().as_deref(), Some("http://old.test"));
        drop(s);
        let s = Store::open(&path).unwrap();
        assert!(s.get(&pod(1)).unwrap().unwrap().credentials_applied);
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sqlite");
        {
            let s = Store::open(&path).unwrap();
            s.insert_starting(&pod(7)).unwrap();
            s.quarantine(&pod(7), &[], "container died", true).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let p = s.get(&pod(7)).unwrap().unwrap();
        assert_eq!(p.state, PodState::Quarantined);
        assert!(p.lost);
        assert_eq!(p.reason.as_deref(), Some("lost: container died"));
    }
}
