//! The commands the agent runs inside a pod's containers (through the runtime's exec): the image's
//! helpers (`clonepool-db-setup`, `clonepool-wp-config`, `clonepool-wp-install`,
//! `clonepool-wp-admin-password`), the pristine snapshots, the reset scripts and the fingerprint
//! collectors. Secrets only ever travel on stdin.

use crate::fingerprint::Fingerprint;
use crate::runtime::{ContainerRuntime, ExecOutput, ExecRequest, RuntimeError};
use crate::secrets::{scrub, Secret};
use clonepool_common::ids::PodId;
use clonepool_common::pod::ContainerRole;
use std::sync::Arc;
use std::time::Duration;

/// The WordPress administrator every pod gets.
pub const ADMIN_USER: &str = "admin";
/// Its e-mail address (a reserved domain: no mail ever leaves a clone).
pub const ADMIN_EMAIL: &str = "admin@clonepool.invalid";
/// The site title of a pristine pod.
pub const SITE_TITLE: &str = "clonepool";

/// Where the pristine copies live inside the containers (root only, 0700).
pub const PRISTINE_DIR: &str = "/var/lib/clonepool";
pub const WP_CONTENT: &str = "/var/lib/wordpress/wp-content";
/// WordPress's own files in the web container (the image's core).
pub const WP_CORE: &str = "/usr/share/wordpress";
/// Written before an import replaces the core with the source's: the next reset then recreates
/// the web container from the image instead of cleaning it in place.
pub const CORE_REPLACED_MARKER: &str = "/usr/share/wordpress/.clonepool-core-replaced";
/// Exit status of the in-place web reset when the core was replaced.
const EXIT_CORE_REPLACED: i64 = 42;

/// Directories a clone (or its processes) can write besides wp-content; emptied on reset and
/// listed in the fingerprint.
pub const WEB_SCRATCH_DIRS: &[&str] = &[
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/var/lib/php/sessions",
    "/var/spool/cron",
];
/// Directories whose files and deeper directories are removed (their first-level directories,
/// e.g. Apache's lock dir, stay).
pub const WEB_FILE_ONLY_DIRS: &[&str] = &["/run/lock", "/var/cache/apache2/mod_cache_disk"];
/// Directories only listed (their content is rewritten by the helpers, never removed).
pub const WEB_LISTED_DIRS: &[&str] = &["/etc/wordpress"];
pub const DB_SCRATCH_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

pub(crate) const MARIADB: &[&str] = &[
    "mariadb",
    "--no-defaults",
    "--socket=/run/mysqld/mysqld.sock",
    "--user=root",
    "--batch",
    "--skip-column-names",
];

#[derive(Debug, thiserror::Error)]
pub enum PodCommandError {
    #[error("{step}: {source}")]
    Runtime {
        step: &'static str,
        source: RuntimeError,
    },
    #[error("{step} failed with exit status {code}: {stderr}")]
    Failed {
        step: &'static str,
        code: i64,
        stderr: String,
    },
}

impl PodCommandError {
    /// The in-place web reset found the core replaced by an import (see [`CORE_REPLACED_MARKER`]).
    pub fn is_core_replaced(&self) -> bool {
        matches!(
            self,
            PodCommandError::Failed {
                step: "web reset",
                code: EXIT_CORE_REPLACED,
                ..
            }
        )
    }

    pub fn is_runtime_unreachable(&self) -> bool {
        matches!(
            self,
            PodCommandError::Runtime {
                source: RuntimeError::Unreachable(_),
                ..
            }
        )
    }

    pub fn runtime_error(&self) -> Option<&RuntimeError> {
        match self {
            PodCommandError::Runtime { source, .. } => Some(source),
            PodCommandError::Failed { .. } => None,
        }
    }
}

/// Shell helpers shared by the scripts: which processes belong in a web/db container.
///
/// Expected: PID 1 (tini), this script and its parent (the exec's `timeout` wrapper), the
/// Apache master (binary /usr/sbin/apache2, child of PID 1) and its workers (children of the
/// master named apache2; root cannot read the binary of www-data's processes without
/// CAP_SYS_PTRACE, and only the master forks them). Everything else is a stray.
const PROC_HELPERS: &str = r#"
ppid_of() { pp=; while read -r k v _; do if [ "$k" = PPid: ]; then pp=$v; return 0; fi; done < "/proc/$1/status"; return 1; }
apache_master=
for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$d/exe" -ef /usr/sbin/apache2 ] || continue
    ppid_of "$p" 2>/dev/null || continue
    if [ "$pp" = 1 ]; then apache_master=$p; fi
done
expected() {
    if [ "$1" = 1 ] || [ "$1" = "$$" ] || [ "$1" = "$PPID" ]; then return 0; fi
    [ -n "$apache_master" ] || return 1
    [ "$1" = "$apache_master" ] && return 0
    ppid_of "$1" 2>/dev/null || return 1
    [ "$pp" = "$apache_master" ] || return 1
    n=
    read -r n 2>/dev/null < "/proc/$1/comm"
    [ "$n" = apache2 ]
}
list_strays() {
    echo "@@$1"
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        expected "$p" && continue
        c=
        read -r c 2>/dev/null < "$d/comm" || continue
        echo "$c"
    done
}
"#;

/// Builds a `sh -c` script from parts.
fn script(parts: &[&str]) -> Vec<String> {
    vec!["sh".into(), "-c".into(), parts.join("\n")]
}

fn list_dirs_cmd(dirs: &[&str]) -> String {
    dirs.iter()
        .map(|d| {
            format!("if [ -e {d} ]; then find {d} -mindepth 1 -printf '%y %m %U:%G %p\\n'; fi")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills every stray process (three rounds, in case one forks meanwhile) and waits until they
/// are reaped. Apache's workers are restarted (SIGHUP) only when a request may still run: a
/// port-80 connection established, half-closed by the client or being opened. An idle worker
/// keeps no state of the previous clone between requests, and a restart would throw away the
/// opcode cache (the next request would take ~0.5 s longer).
const KILL_STRAYS: &str = r#"
victims_all=
for round in 1 2 3; do
    victims=
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        expected "$p" || victims="$victims $p"
    done
    [ -z "$victims" ] && break
    kill -KILL $victims 2>/dev/null
    victims_all="$victims_all $victims"
done
in_flight=
for t in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$t" ] || continue
    while read -r _ local _ st _; do
        case "$local" in
            *:0050) case "$st" in 01|03|08) in_flight=1 ;; esac ;;
        esac
    done < "$t"
done
if [ -n "$in_flight" ] && [ -n "$apache_master" ]; then kill -HUP "$apache_master"; fi
i=0
while [ -n "$victims_all" ] && [ $i -lt 60 ]; do
    left=
    for p in $victims_all; do if [ -e "/proc/$p" ]; then left="$left $p"; fi; done
    victims_all=$left
    [ -z "$left" ] && break
    sleep 0.05
    i=$((i+1))
done
"#;

/// System V IPC objects (message queues, shared memory, semaphores) a clone's PHP created:
/// PHP's sysvmsg/sysvshm/sysvsem let a clone leave data in the web container's IPC namespace,
/// which outlives an in-place reset. Clones run as www-data, so anything not owned and created
/// by root is theirs (an owner can hand an object to another uid, but not its creator uid).
/// `list_ipc` prints `kind id uid cuid` per object; `remove_ipc` removes them.
const IPC_HELPERS: &str = r#"
list_ipc() {
    for kind in msg shm sem; do
        f=/proc/sysvipc/$kind
        [ -r "$f" ] || continue
        awk -v kind="$kind" 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
            ($col["uid"] != 0 || $col["cuid"] != 0) { print kind, $2, $col["uid"], $col["cuid"] }' "$f"
    done
}
remove_ipc() {
    # Root in a container lacks CAP_IPC_OWNER; the creator may always remove, so act as it.
    list_ipc | while read -r kind id _uid cuid; do
        case "$kind" in msg) flag=-q ;; shm) flag=-m ;; *) flag=-s ;; esac
        setpriv --reuid="$cuid" --regid=65534 --clear-groups ipcrm "$flag" "$id"
    done
}
"#;

/// The SQL that empties MariaDB back to its system schemas and users: drops every non-system
/// user and role first (so a clone's process cannot log in again), then ends the connections
/// still open, then drops every non-system database.
const DROP_ALL_SQL: &str = r#"
SET SESSION lock_wait_timeout = 20;
DELIMITER //
BEGIN NOT ATOMIC
    FOR u IN (SELECT user AS n, host AS h, is_role AS r FROM mysql.user
              WHERE NOT (host = 'localhost' AND user IN ('root', 'mysql', 'mariadb.sys'))) DO
        IF u.r = 'Y' THEN
            EXECUTE IMMEDIATE CONCAT('DROP ROLE ', QUOTE(u.n));
        ELSE
            EXECUTE IMMEDIATE CONCAT('DROP USER ', QUOTE(u.n), '@', QUOTE(u.h));
        END IF;
    END FOR;
    BEGIN
        DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;
        FOR c IN (SELECT id FROM information_schema.processlist
                  WHERE id <> CONNECTION_ID() AND user <> 'system user' AND command <> 'Daemon') DO
            EXECUTE IMMEDIATE CONCAT('KILL CONNECTION ', c.id);
        END FOR;
    END;
    FOR d IN (SELECT schema_name AS n FROM information_schema.schemata
              WHERE schema_name NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')) DO
        EXECUTE IMMEDIATE CONCAT('DROP DATABASE `', REPLACE(d.n, '`', '``'), '`');
    END FOR;
END //
DELIMITER ;
"#;

/// Database-side fingerprint queries (run as root).
const DB_FINGERPRINT_SQL: &str = r#"
SELECT '@@databases';
SELECT schema_name FROM information_schema.schemata;
SELECT '@@db-users';
SELECT CONCAT(user, '@', host, ' role=', is_role) FROM mysql.user;
SELECT '@@db-grants';
SELECT CONCAT_WS(' ', grantee, privilege_type) FROM information_schema.user_privileges;
SELECT CONCAT_WS(' ', grantee, table_schema, privilege_type) FROM information_schema.schema_privileges;
SELECT CONCAT_WS(' ', grantee, table_schema, table_name, privilege_type) FROM information_schema.table_privileges;
SELECT '@@db-objects';
SELECT CONCAT_WS(' ', 'routine', routine_schema, routine_name) FROM information_schema.routines;
SELECT CONCAT_WS(' ', 'event', event_schema, event_name) FROM information_schema.events;
SELECT CONCAT_WS(' ', 'trigger', trigger_schema, trigger_name) FROM information_schema.triggers;
SELECT CONCAT_WS(' ', 'view', table_schema, table_name) FROM information_schema.views;
SELECT CONCAT_WS(' ', 'udf', name) FROM mysql.func;
SELECT CONCAT_WS(' ', 'plugin', name) FROM mysql.plugin;
SELECT CONCAT_WS(' ', 'server', server_name) FROM mysql.servers;
SELECT '@@db-globals';
SELECT CONCAT(variable_name, '=', COALESCE(variable_value, 'NULL')) FROM information_schema.global_variables
 WHERE variable_name NOT LIKE 'GTID\_%';
SELECT '@@wp-tables';
SELECT CONCAT_WS(' ', table_schema, table_name, engine) FROM information_schema.tables
 WHERE table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys');
SELECT '@@wp-rows';
SET @q = (SELECT GROUP_CONCAT(CONCAT('SELECT ', QUOTE(table_name), ', COUNT(*) FROM `wordpress`.`',
            REPLACE(table_name, '`', '``'), '`') SEPARATOR ' UNION ALL ')
          FROM information_schema.tables WHERE table_schema = 'wordpress' AND table_name <> 'wp_options');
EXECUTE IMMEDIATE COALESCE(@q, 'SELECT 1 FROM DUAL WHERE FALSE');
SELECT '@@wp-options';
SELECT option_name FROM wordpress.wp_options
 WHERE option_name NOT LIKE '\_transient\_%' AND option_name NOT LIKE '\_site\_transient\_%'
   AND option_name NOT LIKE 'theme\_mods\_%' AND option_name NOT LIKE 'widget\_%';
SELECT '@@wp-settings';
SELECT CONCAT(option_name, '=', option_value) FROM wordpress.wp_options
 WHERE option_name IN ('siteurl', 'home', 'template', 'stylesheet', 'active_plugins', 'blogname',
   'users_can_register', 'default_role', 'admin_email', 'WPLANG', 'db_version', 'upload_path',
   'upload_url_path', 'permalink_structure', 'blog_public', 'wp_user_roles');
SELECT '@@wp-content-rows';
SELECT CONCAT_WS(' ', 'post', ID, post_type, post_status, post_name, post_author, LENGTH(post_content)) FROM wordpress.wp_posts;
SELECT CONCAT_WS(' ', 'user', ID, user_login, user_email) FROM wordpress.wp_users;
SELECT CONCAT_WS(' ', 'usermeta', user_id, meta_key) FROM wordpress.wp_usermeta WHERE meta_key <> 'session_tokens';
SELECT CONCAT_WS(' ', 'term', term_id, slug) FROM wordpress.wp_terms;
SELECT CONCAT_WS(' ', 'comment', comment_ID, comment_post_ID, comment_approved) FROM wordpress.wp_comments;
"#;

/// Runs the agent's commands in one pod's containers.
#[derive(Clone)]
pub struct PodCommands {
    runtime: Arc<dyn ContainerRuntime>,
}

impl std::fmt::Debug for PodCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodCommands")
    }
}

/// A SQL string literal (backslash and quote escaped).
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn tail(text: &str, max: usize) -> String {
    let t = text.trim();
    if t.len() <= max {
        return t.to_string();
    }
    let mut start = t.len() - max;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &t[start..])
}

impl PodCommands {
    pub fn new(runtime: Arc<dyn ContainerRuntime>) -> Self {
        Self { runtime }
    }

    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    async fn run(
        &self,
        pod: &PodId,
        role: ContainerRole,
        step: &'static str,
        request: ExecRequest,
        secrets: &[&Secret],
    ) -> Result<ExecOutput, PodCommandError> {
        let started = std::time::Instant::now();
        let out = self
            .runtime
            .exec(pod, role, request)
            .await
            .map_err(|source| PodCommandError::Runtime { step, source })?;
        tracing::debug!(pod = %pod, step, exit = out.exit_code, ms = started.elapsed().as_millis() as u64, "exec done");
        if !out.success() {
            let stderr = scrub(&out.stderr_str(), secrets);
            let stdout = scrub(&out.stdout_str(), secrets);
            let detail = if stderr.trim().is_empty() {
                stdout
            } else {
                stderr
            };
            return Err(PodCommandError::Failed {
                step,
                code: out.exit_code,
                stderr: tail(&detail, 600),
            });
        }
        Ok(out)
    }

    /// MariaDB answers a query.
    pub async fn db_answers(&self, pod: &PodId) -> Result<(), PodCommandError> {
        let mut cmd: Vec<String> = MARIADB.iter().map(|s| s.to_string()).collect();
        cmd.extend(["-e".to_string(), "SELECT 1".to_string()]);
        self.run(
            pod,
            ContainerRole::Db,
            "database query",
            ExecRequest::new(cmd).timeout(Duration::from_secs(10)),
            &[],
        )
        .await
        .map(|_| ())
    }

    /// `clonepool-db-setup`: database `wordpress` and its user with `db_password` (waits for
    /// MariaDB to answer).
    pub async fn db_setup(&self, pod: &PodId, db_password: &Secret) -> Result<(), PodCommandError> {
        self.run(
            pod,
            ContainerRole::Db,
            "clonepool-db-setup",
            ExecRequest::new(["clonepool-db-setup"])
                .stdin(format!("{}\n", db_password.expose()))
                .timeout(Duration::from_secs(60)),
            &[db_password],
        )
        .await
        .map(|_| ())
    }

    /// `clonepool-wp-config`: a fresh config (new salts) with `db_password`.
    pub async fn wp_config(
        &self,
        pod: &PodId,
        db_password: &Secret,
        site_url: &str,
    ) -> Result<(), PodCommandError> {
        self.run(
            pod,
            ContainerRole::Web,
            "clonepool-wp-config",
            ExecRequest::new(["clonepool-wp-config"])
                .stdin(wp_config_input(db_password, site_url))
                .timeout(Duration::from_secs(30)),
            &[db_password],
        )
        .await
        .map(|_| ())
    }

    /// `clonepool-wp-install` with a fresh admin password.
    pub async fn wp_install(
        &self,
        pod: &PodId,
        site_url: &str,
        admin_password: &Secret,
    ) -> Result<(), PodCommandError> {
        let input = format!(
            "site_url={site_url}\ntitle={SITE_TITLE}\nadmin_user={ADMIN_USER}\nadmin_password={}\nadmin_email={ADMIN_EMAIL}\n",
            admin_password.expose()
        );
        self.run(
            pod,
            ContainerRole::Web,
            "clonepool-wp-install",
            ExecRequest::new(["clonepool-wp-install"])
                .stdin(input)
                .timeout(Duration::from_secs(60)),
            &[admin_password],
        )
        .await
        .map(|_| ())
    }

    /// `clonepool-wp-admin-password`: a new password for the admin, ending its sessions.
    pub async fn set_admin_password(
        &self,
        pod: &PodId,
        password: &Secret,
    ) -> Result<(), PodCommandError> {
        self.run(
            pod,
            ContainerRole::Web,
            "clonepool-wp-admin-password",
            ExecRequest::new(["clonepool-wp-admin-password", ADMIN_USER])
                .stdin(format!("{}\n", password.expose()))
                .timeout(Duration::from_secs(30)),
            &[password],
        )
        .await
        .map(|_| ())
    }

    /// Sets WordPress's siteurl and home (through SQL on stdin).
    pub async fn set_site_url(&self, pod: &PodId, site_url: &str) -> Result<(), PodCommandError> {
        let sql = format!(
            "UPDATE wordpress.wp_options SET option_value = {} WHERE option_name IN ('siteurl', 'home');\n",
            sql_literal(site_url)
        );
        self.run(
            pod,
            ContainerRole::Db,
            "set site URL",
            ExecRequest::new(MARIADB.iter().copied())
                .stdin(sql)
                .timeout(Duration::from_secs(30)),
            &[],
        )
        .await
        .map(|_| ())
    }

    /// The claim in one database exec: siteurl/home become `site_url`, the admin gets `password`
    /// (stored as an MD5 hash, which WordPress accepts and upgrades to its own hash at the first
    /// login) and loses any session. Fails unless exactly one admin user was updated.
    pub async fn apply_claim(
        &self,
        pod: &PodId,
        site_url: &str,
        password: &Secret,
    ) -> Result<(), PodCommandError> {
        let sql = format!(
            "USE wordpress;\n\
             UPDATE wordpress.wp_options SET option_value = {url} WHERE option_name IN ('siteurl', 'home');\n\
             UPDATE wordpress.wp_users SET user_pass = MD5({pw}) WHERE user_login = {user};\n\
             SELECT ROW_COUNT();\n\
             DELETE m FROM wordpress.wp_usermeta m JOIN wordpress.wp_users u ON u.ID = m.user_id\n\
               WHERE u.user_login = {user} AND m.meta_key = 'session_tokens';\n",
            url = sql_literal(site_url),
            pw = sql_literal(password.expose()),
            user = sql_literal(ADMIN_USER),
        );
        let out = self
            .run(
                pod,
                ContainerRole::Db,
                "claim settings",
                ExecRequest::new(MARIADB.iter().copied())
                    .stdin(sql)
                    .timeout(Duration::from_secs(30)),
                &[password],
            )
            .await?;
        if out.stdout_str().trim() != "1" {
            return Err(PodCommandError::Failed {
                step: "claim settings",
                code: 0,
                stderr: format!(
                    "expected one admin user {ADMIN_USER:?} to update, got {:?}",
                    out.stdout_str().trim()
                ),
            });
        }
        Ok(())
    }

    /// Saves the pristine database (SQL dump) and wp-content (a copy) inside the pod, root-only.
    pub async fn snapshot_pristine(&self, pod: &PodId) -> Result<(), PodCommandError> {
        let db = self.run(
            pod,
            ContainerRole::Db,
            "pristine database dump",
            ExecRequest::new(script(&[
                "set -e",
                "umask 077",
                &format!("mkdir -p {PRISTINE_DIR}"),
                &format!("chmod 700 {PRISTINE_DIR}"),
                &format!(
                    "mariadb-dump --no-defaults --socket=/run/mysqld/mysqld.sock --user=root \
                     --single-transaction --skip-comments --skip-dump-date wordpress \
                     > {PRISTINE_DIR}/pristine.sql.tmp"
                ),
                &format!("mv {PRISTINE_DIR}/pristine.sql.tmp {PRISTINE_DIR}/pristine.sql"),
            ]))
            .timeout(Duration::from_secs(60)),
            &[],
        );
        let web = self.run(
            pod,
            ContainerRole::Web,
            "pristine wp-content copy",
            ExecRequest::new(script(&[
                "set -e",
                &format!("mkdir -p {PRISTINE_DIR}/pristine"),
                &format!("chmod 700 {PRISTINE_DIR} {PRISTINE_DIR}/pristine"),
                &format!("rm -rf {PRISTINE_DIR}/pristine/wp-content"),
                &format!("cp -a {WP_CONTENT} {PRISTINE_DIR}/pristine/wp-content"),
            ]))
            .timeout(Duration::from_secs(120)),
            &[],
        );
        let (db, web) = tokio::join!(db, web);
        db?;
        web?;
        Ok(())
    }

    /// Empties MariaDB back to the system schemas, creates database `wordpress` and its user with
    /// `db_password`, and (with `load_pristine`) loads the pod's pristine dump and gives the admin
    /// an unusable random password (a fresh one is set at claim). Also empties the db container's
    /// scratch directories.
    pub async fn reset_database(
        &self,
        pod: &PodId,
        db_password: &Secret,
        load_pristine: bool,
    ) -> Result<(), PodCommandError> {
        let pw = sql_literal(db_password.expose());
        let mut sql = String::from(DROP_ALL_SQL);
        sql.push_str(
            "CREATE DATABASE wordpress CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n",
        );
        for host in ["127.0.0.1", "localhost"] {
            sql.push_str(&format!(
                "CREATE USER 'wordpress'@'{host}' IDENTIFIED BY {pw};\nGRANT ALL PRIVILEGES ON wordpress.* TO 'wordpress'@'{host}';\n"
            ));
        }
        if load_pristine {
            let scramble = Secret::generate(40);
            sql.push_str(&format!(
                "USE wordpress;\nSOURCE {PRISTINE_DIR}/pristine.sql\nUPDATE wp_users SET user_pass = {};\n",
                sql_literal(&format!("!{}", scramble.expose()))
            ));
        }
        let mariadb = MARIADB.join(" ");
        let clean = DB_SCRATCH_DIRS
            .iter()
            .map(|d| format!("find {d} -mindepth 1 -delete 2>/dev/null"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut parts = vec![clean.as_str()];
        let missing_dump = format!(
            "[ -f {PRISTINE_DIR}/pristine.sql ] || {{ echo 'no pristine dump at {PRISTINE_DIR}/pristine.sql' >&2; exit 3; }}"
        );
        if load_pristine {
            parts.push(&missing_dump);
        }
        let exec = format!("exec {mariadb}");
        parts.push(&exec);
        self.run(
            pod,
            ContainerRole::Db,
            "database reset",
            ExecRequest::new(script(&parts))
                .stdin(sql)
                .timeout(Duration::from_secs(60)),
            &[db_password],
        )
        .await
        .map(|_| ())
    }

    /// The web side of an in-place reset: kills stray processes and restarts Apache's workers,
    /// restores wp-content from the pristine copy, empties /tmp, sessions and crontabs, then
    /// writes a fresh config (new salts, `db_password`).
    pub async fn reset_web_in_place(
        &self,
        pod: &PodId,
        db_password: &Secret,
        site_url: &str,
    ) -> Result<(), PodCommandError> {
        let restore = format!(
            "P={PRISTINE_DIR}/pristine/wp-content\n\
             [ -d \"$P\" ] || {{ echo \"no pristine copy of wp-content at $P\" >&2; exit 3; }}\n\
             rm -rf {WP_CONTENT} || exit 4\n\
             cp -R -P --preserve=mode,ownership \"$P\" {WP_CONTENT} || exit 4"
        );
        let scratch = WEB_SCRATCH_DIRS
            .iter()
            .map(|d| format!("if [ -d {d} ]; then find {d} -mindepth 1 -delete; fi"))
            .chain(WEB_FILE_ONLY_DIRS.iter().map(|d| {
                format!(
                    "if [ -d {d} ]; then find {d} -mindepth 1 ! -type d -delete; find {d} -mindepth 2 -type d -empty -delete; fi"
                )
            }))
            .collect::<Vec<_>>()
            .join("\n");
        let core_check = format!(
            "if [ -e {CORE_REPLACED_MARKER} ]; then echo 'the WordPress core was replaced' >&2; exit {EXIT_CORE_REPLACED}; fi"
        );
        let cmd = script(&[
            &core_check,
            PROC_HELPERS,
            KILL_STRAYS,
            IPC_HELPERS,
            "remove_ipc",
            &restore,
            &scratch,
            "exec clonepool-wp-config",
        ]);
        self.run(
            pod,
            ContainerRole::Web,
            "web reset",
            ExecRequest::new(cmd)
                .stdin(wp_config_input(db_password, site_url))
                .timeout(Duration::from_secs(120)),
            &[db_password],
        )
        .await
        .map(|_| ())
    }

    /// Collects the fingerprint of both containers (in parallel).
    pub async fn fingerprint(&self, pod: &PodId) -> Result<Fingerprint, PodCommandError> {
        let db_script = script(&[
            &format!("{} || exit $?", MARIADB.join(" ")),
            PROC_HELPERS,
            "list_strays db-processes",
            "echo @@db-files",
            &list_dirs_cmd(DB_SCRATCH_DIRS),
        ]);
        let web_script = script(&[
            PROC_HELPERS,
            "list_strays web-processes",
            IPC_HELPERS,
            "echo @@web-ipc",
            "list_ipc",
            &format!("cd {WP_CONTENT} || exit 3"),
            "echo @@wp-content-tree",
            "find . -mindepth 1 -printf '%y %m %U:%G %p %l\\n'",
            "echo @@wp-content-sums",
            // -L: also what the theme/plugin symlinks point to.
            "find -L . -type f -exec sha256sum -- {} +",
            "echo @@web-files",
            &list_dirs_cmd(WEB_SCRATCH_DIRS),
            &list_dirs_cmd(WEB_FILE_ONLY_DIRS),
            &list_dirs_cmd(WEB_LISTED_DIRS),
        ]);
        let db = self.run(
            pod,
            ContainerRole::Db,
            "database fingerprint",
            ExecRequest::new(db_script)
                .stdin(DB_FINGERPRINT_SQL)
                .timeout(Duration::from_secs(60)),
            &[],
        );
        let web = self.run(
            pod,
            ContainerRole::Web,
            "web fingerprint",
            ExecRequest::new(web_script).timeout(Duration::from_secs(60)),
            &[],
        );
        let (db, web) = tokio::join!(db, web);
        let (db, web) = (db?, web?);
        Ok(Fingerprint::from_outputs(&[
            &db.stdout_str(),
            &web.stdout_str(),
        ]))
    }
}

fn wp_config_input(db_password: &Secret, site_url: &str) -> String {
    format!(
        "db_password={}\nsite_url={site_url}\n",
        db_password.expose()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_literals_escape_quotes_and_backslashes() {
        assert_eq!(sql_literal("a'b\\c"), "'a\\'b\\\\c'");
    }

    #[test]
    fn long_error_output_keeps_its_end() {
        let t = tail(&"x".repeat(1000), 10);
        assert!(t.starts_with('…') && t.ends_with("xxxxxxxxxx"));
    }
}
