//! Relational storage for services that keep state: one SQLite file per service under
//! `HELIX_HOME` (the embedded default), or one PostgreSQL schema per service
//! (`helix_<service>`) when `database_url` is `postgres://...`.
//!
//! Services write their SQL once for both backends through sqlx's `Any` driver: `$N`
//! placeholders, and only types both share (TEXT, BIGINT, DOUBLE PRECISION).

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

use tokio_util::sync::CancellationToken;

use crate::{Error, HelixConfig, Result, ServiceContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A service's database: the pool and which backend it talks to.
#[derive(Debug, Clone)]
pub struct Database {
    pub pool: AnyPool,
    /// Where write transactions are begun ([`Outbox::begin`](crate::outbox::Outbox::begin)).
    /// On SQLite a pool of one connection: writers wait their turn in its queue instead of
    /// on SQLite's lock, whose busy handler sleeps up to 100 ms between looks, so that
    /// under concurrent writes a writer could sleep while the lock stood free. On
    /// PostgreSQL the same pool as `pool`.
    pub writer: AnyPool,
    pub backend: Backend,
}

impl Database {
    /// Opens `service`'s database and, unless `config.migrate` is off, runs the
    /// migrations for its backend, and registers it with `/readyz`. On SQLite it also
    /// starts the WAL checkpointer on the context's tasks.
    pub async fn open(ctx: &ServiceContext, service: &str, sqlite: &Migrator, postgres: &Migrator) -> Result<Self> {
        let db = Self::connect(&ctx.config, service).await?;
        if ctx.config.migrate {
            db.migrate(sqlite, postgres).await?;
        }
        if db.backend == Backend::Sqlite {
            ctx.tasks.spawn(checkpoint_wal(db.pool.clone(), ctx.shutdown.clone()));
        }
        let checked = db.clone();
        ctx.readiness.add(format!("{service} database"), move || {
            let db = checked.clone();
            Box::pin(async move { db.check().await.map_err(|e| e.to_string()) })
        });
        Ok(db)
    }

    /// Connects to `service`'s database, creating its SQLite file or PostgreSQL schema.
    pub async fn connect(config: &HelixConfig, service: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match &config.database_url {
            Some(url) if url.starts_with("sqlite:") => (url.clone(), Backend::Sqlite),
            Some(url) => (url.clone(), Backend::Postgres),
            None => {
                secure_home(&config.home)?;
                let file = config.home.join(format!("{service}.db"));
                private_sqlite_file(&file)?;
                (format!("sqlite://{}?mode=rwc", file.display()), Backend::Sqlite)
            }
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let sqlite = |connections: u32| {
            AnyPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                             PRAGMA wal_autocheckpoint = 10000;",
                        )
                        .await?;
                        Ok(())
                    })
                })
        };
        let pool = match backend {
            // readers in WAL mode do not wait for the writer
            Backend::Sqlite => sqlite(8).connect_with(options.clone()).await?,
            Backend::Postgres => {
                let schema = format!("helix_{}", service.replace('-', "_"));
                create_schema(&url, &schema).await?;
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    // sqlx pings a connection each time it leaves the pool: a round trip
                    // before every transaction. A connection that broke is found by the
                    // statement that uses it, which fails as the ping would have.
                    .test_before_acquire(false)
                    .after_connect(move |conn, _| {
                        let set = format!("SET search_path TO {schema}");
                        Box::pin(async move {
                            conn.execute(set.as_str()).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
        };
        let writer = match backend {
            Backend::Sqlite => sqlite(1).connect_lazy_with(AnyConnectOptions::from_str(&url)?),
            Backend::Postgres => pool.clone(),
        };
        Ok(Self { pool, writer, backend })
    }

    /// Brings the schema up to date with the migrations of this backend.
    pub async fn migrate(&self, sqlite: &Migrator, postgres: &Migrator) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Whether the database answers; for health checks.
    pub async fn check(&self) -> Result<()> {
        self.pool.execute("SELECT 1").await?;
        Ok(())
    }
}

/// Creates `HELIX_HOME` if missing and makes it 0700 on unix: it holds every SQLite file,
/// the admin key, the fleet token and the search index, and a directory only its owner
/// may enter protects whatever is created inside it later, whatever that file's own mode.
/// A home this process may not change (a volume owned by another user) is left as it is,
/// with a warning.
pub fn secure_home(home: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(home)?;
        let mode = std::fs::metadata(home)?.permissions().mode() & 0o777;
        if mode != 0o700
            && let Err(error) = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
        {
            tracing::warn!(home = %home.display(), mode = format!("{mode:o}"), %error, "cannot make the helix home private");
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(home)
}

/// Makes `file` (created empty if missing: SQLite takes an empty file as an empty
/// database) and any `-wal`/`-shm` beside it 0600 on unix. SQLite gives the log files it
/// creates later the mode of the database file, so they are born 0600 too.
fn private_sqlite_file(file: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(file)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut path = file.as_os_str().to_owned();
            path.push(suffix);
            match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// SQLite folds its write-ahead log back into the database file in the connection that
/// commits when the log passes `wal_autocheckpoint` pages: that request then waits
/// milliseconds. Checkpointing here, off the request path, keeps the log short; the
/// high autocheckpoint (10000 pages) remains only as a backstop.
async fn checkpoint_wal(pool: AnyPool, shutdown: CancellationToken) {
    const EVERY: Duration = Duration::from_millis(250);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        // PASSIVE: copies what it can without waiting for, or blocking, readers and writers
        if let Err(error) = pool.execute("PRAGMA wal_checkpoint(PASSIVE)").await {
            tracing::debug!(%error, "wal checkpoint skipped");
        }
    }
}

/// Each service owns one schema; creating it before the pool exists keeps concurrent
/// first connections from racing on `CREATE SCHEMA`.
async fn create_schema(url: &str, schema: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    // Two processes starting together may both try; the loser's error is harmless.
    match conn.execute(format!("CREATE SCHEMA IF NOT EXISTS {schema}").as_str()).await {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
        Err(e) => return Err(Error::Database(e)),
    }
    conn.close().await?;
    Ok(())
}

/// Maps a database failure to the service error: the caller learns whether to retry,
/// never the SQL or the connection string.
pub fn db_error(error: sqlx::Error) -> helix_core::Error {
    match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            tracing::warn!(%error, "database unavailable");
            helix_core::Error::unavailable("the database is unavailable")
        }
        sqlx::Error::Database(db) if db.message().contains("database is locked") => {
            tracing::warn!(%error, "database busy");
            helix_core::Error::unavailable("the database is busy, retry")
        }
        // a write that lost a race for a unique key (two creations of one name at once):
        // the caller's request conflicts with what exists, not a fault of the service
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            tracing::warn!(%error, "unique key taken");
            helix_core::Error::conflict("already_exists", "a record with the same unique key already exists")
        }
        _ => {
            tracing::error!(%error, "database error");
            helix_core::Error::internal("a database operation failed")
        }
    }
}

/// One page of rows newest first, by keyset on a UUIDv7 `id` column (creation order):
/// `filtered` is a `SELECT ... WHERE ...` whose `$N` placeholders take `args`; rows
/// older than `after` follow. The cursor of the next page is the last id, when more
/// rows follow.
pub async fn newest_first<T>(
    pool: &AnyPool,
    filtered: String,
    mut args: Vec<String>,
    after: Option<uuid::Uuid>,
    limit: u32,
    from_row: impl Fn(&sqlx::any::AnyRow) -> helix_core::Result<T>,
    id_of: impl Fn(&T) -> uuid::Uuid,
) -> helix_core::Result<(Vec<T>, Option<String>)> {
    let mut sql = filtered;
    if let Some(after) = after {
        args.push(after.to_string());
        sql.push_str(&format!(" AND id < ${}", args.len()));
    }
    // one extra row tells whether another page follows
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", u64::from(limit) + 1));
    let mut query = sqlx::query(&sql);
    for arg in args {
        query = query.bind(arg);
    }
    let rows = query.fetch_all(pool).await.map_err(db_error)?;
    let mut items = rows.iter().map(from_row).collect::<helix_core::Result<Vec<_>>>()?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|item| id_of(item).to_string())
    } else {
        None
    };
    Ok((items, next))
}

/// The current time at the precision the database keeps (microseconds), so what a
/// write returns equals what is read back.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    from_micros(micros(chrono::Utc::now()))
}

/// Times are stored as BIGINT microseconds since the Unix epoch, UTC.
pub fn micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// `($1, $2), ($3, $4)` for `rows` rows of `columns` values: the VALUES of a multi-row
/// INSERT whose only parameters they are. On SQLite they are anonymous (`(?, ?), (?, ?)`,
/// numbered in order by SQLite): sqlx binds a `$N` parameter by asking SQLite its name,
/// which SQLite finds by walking the statement's list of names, so binding n named
/// parameters costs n² steps, and a 3,000-value insert spent more time binding than
/// writing.
pub fn value_rows(backend: Backend, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        sql.push_str(&parameters(backend, row * columns, columns));
        sql.push(')');
    }
    sql
}

/// `$1, $2, $3` for `count` parameters after the first `before`, as
/// [`value_rows`] writes them: anonymous on SQLite, so a statement using it must have
/// no other parameters after these.
pub fn parameters(backend: Backend, before: usize, count: usize) -> String {
    let mut sql = String::with_capacity(count * 5);
    for i in 0..count {
        if i > 0 {
            sql.push_str(", ");
        }
        match backend {
            Backend::Sqlite => sql.push('?'),
            Backend::Postgres => {
                sql.push('$');
                sql.push_str(&(before + i + 1).to_string());
            }
        }
    }
    sql
}

impl Backend {
    /// The backend a connection (or a transaction on one) talks to.
    pub fn of(connection: &sqlx::AnyConnection) -> Self {
        if connection.backend_name().eq_ignore_ascii_case("sqlite") { Backend::Sqlite } else { Backend::Postgres }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_taken_unique_key_is_a_conflict_not_a_fault() {
        sqlx::any::install_default_drivers();
        // one connection: each has its own in-memory database
        let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect("sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE names (name TEXT PRIMARY KEY)").execute(&mut db).await.unwrap();
        sqlx::query("INSERT INTO names VALUES ('a')").execute(&mut db).await.unwrap();
        let error = sqlx::query("INSERT INTO names VALUES ('a')").execute(&mut db).await.unwrap_err();
        let error = super::db_error(error);
        assert_eq!((error.kind(), error.code()), (helix_core::ErrorKind::Conflict, "already_exists"));
    }

    #[test]
    fn value_rows_number_placeholders_row_by_row() {
        use super::Backend::{Postgres, Sqlite};
        assert_eq!(super::value_rows(Postgres, 1, 1), "($1)");
        assert_eq!(super::value_rows(Postgres, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(super::value_rows(Sqlite, 2, 3), "(?, ?, ?), (?, ?, ?)");
        assert_eq!(super::parameters(Postgres, 2, 3), "$3, $4, $5");
        assert_eq!(super::parameters(Sqlite, 2, 3), "?, ?, ?");
    }
}
