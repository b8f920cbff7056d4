//! The embedded default of [`VectorStore`]: every vector in one flat in-memory matrix,
//! searched exactly (each query is compared with every vector that passes the filter),
//! kept on disk as a snapshot plus a log of changes ([`file`](super::file)).
//!
//! Exact search is a choice for the corpus one machine holds: 100,000 notes of MiniLM's
//! 384 dimensions are 38 million multiply-adds per query, a few milliseconds, with
//! perfect recall and no index to build or tune. Larger corpora belong in a Qdrant
//! cluster (`HELIX_QDRANT_URL`); decisions 0012 says why this replaced qdrant-edge.
//!
//! Vectors are stored at unit length, so cosine similarity is a dot product. Namespaces,
//! kinds and tags are interned to numbers, so a filter is a few integer comparisons.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use helix_core::{Error, Result};
use uuid::Uuid;

use super::file::{self, End, HEADER_LEN, PointRef};
use super::{EmbedderMark, Neighbour, VectorFilter, VectorOp, VectorPoint, VectorStore, vector_error};

const SNAPSHOT: &str = "snapshot.hxv";
const LOG: &str = "log.hxv";
const LOCK: &str = "vectors.lock";
/// The log is folded into the snapshot once it is this long and at least half the
/// snapshot's size: each point is rewritten a bounded number of times as a corpus grows.
const COMPACT_AFTER: u64 = 4 << 20;
/// What the store was built with, so a change of embedder is noticed at start.
const EMBEDDER_FILE: &str = "embedder.json";

/// The embedded store.
pub struct FlatVectors {
    dir: PathBuf,
    dim: usize,
    /// `None` once closed
    state: RwLock<Option<State>>,
}

struct State {
    points: Points,
    /// appends go here; a mutex so compaction can run beside searches under the read lock
    log: Mutex<Log>,
    /// held for the store's life: a second process on the same directory is refused
    _lock: File,
}

struct Log {
    file: File,
    /// bytes of whole records (and the header); a failed append is cut back to it
    len: u64,
    snapshot_len: u64,
}

/// The points, in slots: slot `i` owns `ids[i]`, `meta[i]` and `vectors[i*dim..][..dim]`.
struct Points {
    dim: usize,
    ids: Vec<Uuid>,
    meta: Vec<Meta>,
    vectors: Vec<f32>,
    slots: HashMap<Uuid, usize>,
    labels: Labels,
}

struct Meta {
    namespace: u32,
    kind: u32,
    tags: Box<[u32]>,
    updated_at: i64,
    version: i64,
}

/// Interned namespace, kind and tag strings. Labels are never forgotten while the store
/// is open; reopening keeps only those of live points.
#[derive(Default)]
struct Labels {
    numbers: HashMap<String, u32>,
    names: Vec<String>,
}

impl Labels {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&number) = self.numbers.get(name) {
            return number;
        }
        let number = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.numbers.insert(name.to_owned(), number);
        number
    }

    fn find(&self, name: &str) -> Option<u32> {
        self.numbers.get(name).copied()
    }

    fn name(&self, number: u32) -> &str {
        &self.names[number as usize]
    }
}

impl Points {
    fn new(dim: usize) -> Self {
        Self {
            dim,
            ids: Vec::new(),
            meta: Vec::new(),
            vectors: Vec::new(),
            slots: HashMap::new(),
            labels: Labels::default(),
        }
    }

    fn apply(&mut self, op: VectorOp) {
        match op {
            VectorOp::Upsert(point) => self.upsert(point),
            VectorOp::Delete(id) => self.delete(id),
        }
    }

    fn upsert(&mut self, point: VectorPoint) {
        let meta = Meta {
            namespace: self.labels.intern(&point.namespace),
            kind: self.labels.intern(&point.kind),
            tags: point.tags.iter().map(|tag| self.labels.intern(tag)).collect(),
            updated_at: point.updated_at,
            version: point.version,
        };
        let unit = unit_length(point.vector);
        match self.slots.get(&point.id) {
            Some(&slot) => {
                self.meta[slot] = meta;
                self.vectors[slot * self.dim..][..self.dim].copy_from_slice(&unit);
            }
            None => {
                self.slots.insert(point.id, self.ids.len());
                self.ids.push(point.id);
                self.meta.push(meta);
                self.vectors.extend_from_slice(&unit);
            }
        }
    }

    /// The last slot moves into the freed one: the matrix stays dense.
    fn delete(&mut self, id: Uuid) {
        let Some(slot) = self.slots.remove(&id) else { return };
        let last = self.ids.len() - 1;
        self.ids.swap_remove(slot);
        self.meta.swap_remove(slot);
        if slot != last {
            self.vectors.copy_within(last * self.dim..(last + 1) * self.dim, slot * self.dim);
            self.slots.insert(self.ids[slot], slot);
        }
        self.vectors.truncate(last * self.dim);
    }

    fn search(&self, query: &[f32], filter: &VectorFilter, limit: usize) -> Vec<Neighbour> {
        let Some(filter) = Compiled::new(filter, &self.labels) else { return Vec::new() };
        if limit == 0 {
            return Vec::new();
        }
        let query = unit_length(query.to_vec());
        // the `limit` best so far, worst on top
        let mut best: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(limit + 1);
        for (slot, vector) in self.vectors.chunks_exact(self.dim).enumerate() {
            if !filter.passes(&self.meta[slot]) {
                continue;
            }
            let score = Scored { similarity: dot(&query, vector), slot };
            if best.len() < limit {
                best.push(Reverse(score));
            } else if best.peek().is_some_and(|worst| score > worst.0) {
                best.pop();
                best.push(Reverse(score));
            }
        }
        let mut found: Vec<Scored> = best.into_iter().map(|Reverse(scored)| scored).collect();
        found.sort_by(|a, b| b.cmp(a));
        found.into_iter().map(|s| Neighbour { id: self.ids[s.slot], similarity: s.similarity }).collect()
    }

    /// Every live point as a snapshot holds it.
    fn write_snapshot(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&file::header(self.dim))?;
        let mut record = Vec::new();
        for (slot, id) in self.ids.iter().enumerate() {
            let meta = &self.meta[slot];
            let tags: Vec<&str> = meta.tags.iter().map(|&tag| self.labels.name(tag)).collect();
            record.clear();
            file::append_upsert(
                &mut record,
                &PointRef {
                    id: *id,
                    updated_at: meta.updated_at,
                    version: meta.version,
                    namespace: self.labels.name(meta.namespace),
                    kind: self.labels.name(meta.kind),
                    tags: &tags,
                    vector: &self.vectors[slot * self.dim..][..self.dim],
                },
            );
            out.write_all(&record)?;
        }
        Ok(())
    }
}

/// A similarity with its slot, ordered by similarity (ties: the lower slot first, so
/// answers do not depend on the heap's order).
#[derive(Clone, Copy, PartialEq)]
struct Scored {
    similarity: f32,
    slot: usize,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.similarity.total_cmp(&other.similarity).then_with(|| other.slot.cmp(&self.slot))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A filter in label numbers.
struct Compiled {
    namespaces: Vec<u32>,
    kinds: Vec<u32>,
    tags: Vec<u32>,
    after: Option<i64>,
    before: Option<i64>,
}

impl Compiled {
    /// `None` when nothing can pass: a namespace, kind or tag no point has.
    fn new(filter: &VectorFilter, labels: &Labels) -> Option<Self> {
        let any_of = |names: &[String]| -> Option<Vec<u32>> {
            let known: Vec<u32> = names.iter().filter_map(|name| labels.find(name)).collect();
            (names.is_empty() || !known.is_empty()).then_some(known)
        };
        Some(Self {
            namespaces: any_of(&filter.namespaces)?,
            kinds: any_of(&filter.kinds)?,
            tags: filter.tags.iter().map(|tag| labels.find(tag)).collect::<Option<_>>()?,
            after: filter.updated_after,
            before: filter.updated_before,
        })
    }

    fn passes(&self, meta: &Meta) -> bool {
        (self.namespaces.is_empty() || self.namespaces.contains(&meta.namespace))
            && (self.kinds.is_empty() || self.kinds.contains(&meta.kind))
            && self.tags.iter().all(|tag| meta.tags.contains(tag))
            && self.after.is_none_or(|after| meta.updated_at > after)
            && self.before.is_none_or(|before| meta.updated_at < before)
    }
}

/// Eight lanes summed apart, so the compiler keeps them in SIMD registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a_chunks, a_rest) = a.as_chunks::<8>();
    let (b_chunks, b_rest) = b.as_chunks::<8>();
    let mut lanes = [0.0f32; 8];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + rest
}

/// A vector of length zero (or not finite) compares as similarity 0 with everything.
fn unit_length(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm.is_finite() && norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    } else {
        vector.iter_mut().for_each(|v| *v = 0.0);
    }
    vector
}

fn io_error(what: &str, path: &Path) -> impl Fn(std::io::Error) -> Error {
    let at = format!("{what} {}", path.display());
    move |error| vector_error(format!("{at}: {error}"))
}

impl FlatVectors {
    /// Opens the store at `path` for vectors of `mark`'s embedder, creating it when there
    /// is none. A store built by another embedder (or of another dimension) is moved
    /// aside and a new one created. Answers true when the store is new or was damaged
    /// (it starts empty), so the caller knows it must be filled.
    ///
    /// `fresh` drops what the store holds (its full-text side was lost: vectors without
    /// documents would never be cleaned).
    pub fn open(path: &Path, mark: &EmbedderMark, fresh: bool) -> Result<(Self, bool)> {
        let marked = path.join(EMBEDDER_FILE);
        if fresh && marked.exists() {
            tracing::info!(path = %path.display(), "the full-text index is new: its old vectors are dropped");
            std::fs::remove_file(&marked).map_err(vector_error)?;
        }
        let existing: Option<EmbedderMark> =
            std::fs::read(&marked).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let mut created = existing.is_none();
        if existing.as_ref().is_some_and(|old| old != mark) {
            let aside = aside_path(path);
            tracing::warn!(
                old = ?existing, new = ?mark, moved_to = %aside.display(),
                "the embedder changed: the vector index is rebuilt"
            );
            std::fs::rename(path, &aside).map_err(vector_error)?;
            created = true;
        }
        if created && path.exists() {
            // a store without its mark was never finished: start over
            std::fs::remove_dir_all(path).map_err(vector_error)?;
        }
        std::fs::create_dir_all(path).map_err(vector_error)?;
        let (store, intact) = Self::load(path, mark)?;
        if created {
            let bytes = serde_json::to_vec(mark).map_err(vector_error)?;
            std::fs::write(&marked, bytes).map_err(vector_error)?;
        }
        Ok((store, created || !intact))
    }

    /// Reads the store in `dir` (which exists and is marked for the embedder): its
    /// snapshot, then its log. Answers false when the files were damaged beyond a torn
    /// last record: the store then starts empty.
    fn load(dir: &Path, mark: &EmbedderMark) -> Result<(Self, bool)> {
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("opening", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::unavailable(format!(
                    "the vector index at {} is in use by another process (one search service per HELIX_HOME)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error("locking", &lock_path)(e)),
        }
        let mut points = Points::new(mark.dim);
        let snapshot_path = dir.join(SNAPSHOT);
        let mut intact = true;
        let snapshot_len = match File::open(&snapshot_path) {
            Ok(snapshot) => {
                let len = snapshot.metadata().map_err(io_error("reading", &snapshot_path))?.len();
                let mut reader = BufReader::with_capacity(1 << 20, snapshot);
                let end = match file::read_header(&mut reader).map_err(io_error("reading", &snapshot_path))? {
                    Some(dim) if dim == mark.dim => file::read_records(&mut reader, mark.dim, |op| points.apply(op))
                        .map_err(io_error("reading", &snapshot_path))?,
                    _ => End::Torn(0),
                };
                // a snapshot is renamed into place whole: any damage is not a crash's
                if end != End::Clean {
                    tracing::warn!(path = %snapshot_path.display(), "the vector snapshot is damaged: the vector index is rebuilt");
                    points = Points::new(mark.dim);
                    intact = false;
                }
                len
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_error("reading", &snapshot_path)(e)),
        };
        let log_path = dir.join(LOG);
        let mut log_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(io_error("opening", &log_path))?;
        let log_len = if intact { replay(&mut log_file, &log_path, mark.dim, &mut points)? } else { 0 };
        if log_len == 0 {
            log_file.set_len(0).map_err(io_error("writing", &log_path))?;
            log_file.write_all(&file::header(mark.dim)).map_err(io_error("writing", &log_path))?;
            log_file.sync_data().map_err(io_error("writing", &log_path))?;
        }
        let len = log_len.max(HEADER_LEN);
        log_file.seek(SeekFrom::Start(len)).map_err(io_error("writing", &log_path))?;
        let state = State {
            points,
            log: Mutex::new(Log { file: log_file, len, snapshot_len: if intact { snapshot_len } else { 0 } }),
            _lock: lock,
        };
        let store = Self { dir: dir.to_owned(), dim: mark.dim, state: RwLock::new(Some(state)) };
        if !intact {
            // the damaged snapshot must not be read again after the empty log
            store.compact(true)?;
        }
        Ok((store, intact))
    }

    fn read_state<T>(&self, work: impl FnOnce(&State) -> Result<T>) -> Result<T> {
        let state = self.state.read().expect("vector store lock");
        work(state.as_ref().ok_or_else(closed)?)
    }

    /// Folds the log into a new snapshot when it has grown enough (or always).
    /// Applies wait; searches go on.
    fn compact(&self, always: bool) -> Result<bool> {
        self.read_state(|state| {
            let mut log = state.log.lock().expect("vector log lock");
            if !always && (log.len < COMPACT_AFTER || log.len * 2 < log.snapshot_len) {
                return Ok(false);
            }
            let snapshot_path = self.dir.join(SNAPSHOT);
            let temporary = self.dir.join(format!("{SNAPSHOT}.tmp"));
            let write = || -> std::io::Result<u64> {
                let file = File::create(&temporary)?;
                let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
                state.points.write_snapshot(&mut out)?;
                let file = out.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                let len = file.metadata()?.len();
                std::fs::rename(&temporary, &snapshot_path)?;
                File::open(&self.dir)?.sync_all()?;
                Ok(len)
            };
            log.snapshot_len = write().map_err(io_error("writing", &snapshot_path))?;
            // a crash before this replays the old log over the new snapshot: the same end
            let log_path = self.dir.join(LOG);
            log.file.set_len(HEADER_LEN).map_err(io_error("writing", &log_path))?;
            log.file.seek(SeekFrom::Start(HEADER_LEN)).map_err(io_error("writing", &log_path))?;
            log.file.sync_data().map_err(io_error("writing", &log_path))?;
            log.len = HEADER_LEN;
            Ok(true)
        })
    }
}

/// Replays the log into `points`; answers the length of its whole records (0 when it
/// has no header of ours). A torn last record is cut off.
fn replay(log: &mut File, path: &Path, dim: usize, points: &mut Points) -> Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, &mut *log);
    match file::read_header(&mut reader).map_err(io_error("reading", path))? {
        Some(found) if found == dim => {}
        _ => return Ok(0),
    }
    let end = file::read_records(&mut reader, dim, |op| points.apply(op)).map_err(io_error("reading", path))?;
    drop(reader);
    let file_len = log.metadata().map_err(io_error("reading", path))?.len();
    Ok(match end {
        End::Clean => file_len,
        End::Torn(at) => {
            tracing::warn!(path = %path.display(), at, dropped = file_len - at, "the vector log ends in a torn record: cut off");
            log.set_len(at).map_err(io_error("writing", path))?;
            at
        }
    })
}

/// `vectors` → `vectors.replaced-<unix seconds>` beside it.
fn aside_path(path: &Path) -> PathBuf {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".replaced-{seconds}"));
    path.with_file_name(name)
}

fn closed() -> Error {
    Error::unavailable("the vector index is closed")
}

impl VectorStore for FlatVectors {
    fn apply(&self, ops: Vec<VectorOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        for op in &ops {
            match op {
                VectorOp::Upsert(point) => {
                    super::check_dim(self.dim, &point.vector)?;
                    let tags: Vec<&str> = point.tags.iter().map(String::as_str).collect();
                    file::append_upsert(
                        &mut records,
                        &PointRef {
                            id: point.id,
                            updated_at: point.updated_at,
                            version: point.version,
                            namespace: &point.namespace,
                            kind: &point.kind,
                            tags: &tags,
                            vector: &point.vector,
                        },
                    );
                }
                VectorOp::Delete(id) => file::append_delete(&mut records, *id),
            }
        }
        let mut state = self.state.write().expect("vector store lock");
        let state = state.as_mut().ok_or_else(closed)?;
        let log = state.log.get_mut().expect("vector log lock");
        let log_path = self.dir.join(LOG);
        let written = log.file.write_all(&records).and_then(|()| log.file.sync_data());
        if let Err(error) = written {
            // cut a partial append back, so the next one follows whole records
            let _ = log.file.set_len(log.len).and_then(|()| log.file.seek(SeekFrom::Start(log.len)).map(drop));
            return Err(io_error("writing", &log_path)(error));
        }
        log.len += records.len() as u64;
        for op in ops {
            state.points.apply(op);
        }
        Ok(())
    }

    fn search(&self, query: &[f32], filter: &VectorFilter, limit: usize) -> Result<Vec<Neighbour>> {
        super::check_dim(self.dim, query)?;
        self.read_state(|state| Ok(state.points.search(query, filter, limit)))
    }

    fn count(&self) -> u64 {
        self.read_state(|state| Ok(state.points.ids.len() as u64)).unwrap_or(0)
    }

    fn versions(&self, ids: &[Uuid]) -> Result<Vec<Option<i64>>> {
        self.read_state(|state| {
            let points = &state.points;
            Ok(ids.iter().map(|id| points.slots.get(id).map(|&slot| points.meta[slot].version)).collect())
        })
    }

    fn optimize(&self) -> Result<bool> {
        self.compact(false)
    }

    fn close(&self) {
        // the log is synced at every apply; dropping the state releases the lock file
        self.state.write().expect("vector store lock").take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIM: usize = 3;

    fn mark() -> EmbedderMark {
        EmbedderMark { name: "test".to_owned(), dim: DIM }
    }

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn point(n: u8, vector: [f32; DIM], namespace: &str, tags: &[&str], updated_at: i64) -> VectorOp {
        VectorOp::Upsert(VectorPoint {
            id: id(n),
            vector: vector.to_vec(),
            namespace: namespace.to_owned(),
            kind: "note".to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            updated_at,
            version: updated_at + 1,
        })
    }

    fn ids(found: &[Neighbour]) -> Vec<u8> {
        found.iter().map(|n| n.id.as_bytes()[0]).collect()
    }

    fn corpus() -> Vec<VectorOp> {
        vec![
            point(1, [1.0, 0.0, 0.0], "a", &["red"], 10),
            point(2, [0.9, 0.1, 0.0], "a", &["red", "big"], 20),
            point(3, [0.0, 1.0, 0.0], "b", &["big"], 30),
            point(4, [-1.0, 0.0, 0.0], "b", &[], 40),
            point(5, [0.0, 0.0, 0.0], "a", &[], 50),
        ]
    }

    #[test]
    fn filters_rank_and_limit_like_the_cluster_backend() {
        let dir = tempfile::tempdir().unwrap();
        let (store, intact) = FlatVectors::load(dir.path(), &mark()).unwrap();
        assert!(intact);
        store.apply(corpus()).unwrap();
        let query = [2.0, 0.0, 0.0];
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let cases: Vec<(&str, VectorFilter, usize, Vec<u8>)> = vec![
            ("all, nearest first", VectorFilter::default(), 10, vec![1, 2, 3, 5, 4]),
            ("limit", VectorFilter::default(), 2, vec![1, 2]),
            ("namespace", VectorFilter { namespaces: strings(&["b"]), ..Default::default() }, 10, vec![3, 4]),
            ("any namespace", VectorFilter { namespaces: strings(&["zz", "b"]), ..Default::default() }, 10, vec![3, 4]),
            ("unknown namespace", VectorFilter { namespaces: strings(&["zz"]), ..Default::default() }, 10, vec![]),
            ("every tag", VectorFilter { tags: strings(&["red", "big"]), ..Default::default() }, 10, vec![2]),
            ("unknown tag", VectorFilter { tags: strings(&["red", "zz"]), ..Default::default() }, 10, vec![]),
            ("kind", VectorFilter { kinds: strings(&["note"]), ..Default::default() }, 1, vec![1]),
            (
                "time window, exclusive",
                VectorFilter { updated_after: Some(10), updated_before: Some(40), ..Default::default() },
                10,
                vec![2, 3],
            ),
            ("limit 0", VectorFilter::default(), 0, vec![]),
        ];
        for (name, filter, limit, expected) in cases {
            assert_eq!(ids(&store.search(&query, &filter, limit).unwrap()), expected, "{name}");
        }
        let found = store.search(&query, &VectorFilter::default(), 1).unwrap();
        assert!((found[0].similarity - 1.0).abs() < 1e-6, "cosine, not a raw dot product");
    }

    /// A vector hit is checked against its document again (its filter fields may lag):
    /// both checks must agree on what passes.
    #[test]
    fn documents_pass_the_same_filters_as_their_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FlatVectors::load(dir.path(), &mark()).unwrap();
        store.apply(corpus()).unwrap();
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let filters = [
            VectorFilter::default(),
            VectorFilter { namespaces: strings(&["b"]), ..Default::default() },
            VectorFilter { namespaces: strings(&["zz"]), ..Default::default() },
            VectorFilter { tags: strings(&["red", "big"]), ..Default::default() },
            VectorFilter { kinds: strings(&["note", "fact"]), ..Default::default() },
            VectorFilter { updated_after: Some(10), updated_before: Some(40), ..Default::default() },
        ];
        for filter in filters {
            let by_vector: Vec<u8> = {
                let mut found = ids(&store.search(&[1.0, 1.0, 1.0], &filter, 10).unwrap());
                found.sort();
                found
            };
            let by_document: Vec<u8> = corpus()
                .into_iter()
                .filter_map(|op| match op {
                    VectorOp::Upsert(point) => Some(point),
                    VectorOp::Delete(_) => None,
                })
                .filter(|point| {
                    let doc = crate::document::Document {
                        id: point.id.to_string(),
                        namespace: point.namespace.clone(),
                        kind: point.kind.clone(),
                        title: String::new(),
                        content: String::new(),
                        tags: point.tags.clone(),
                        source: String::new(),
                        importance: 0.0,
                        metadata_json: "{}".to_owned(),
                        created_at: crate::document::micros_to_time(point.updated_at),
                        updated_at: crate::document::micros_to_time(point.updated_at),
                        version: point.version,
                        embedding: None,
                    };
                    filter.admits(&doc)
                })
                .map(|point| point.id.as_bytes()[0])
                .collect();
            assert_eq!(by_vector, by_document, "{filter:?}");
        }
    }

    #[test]
    fn upserts_replace_and_deletes_keep_the_matrix_dense() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FlatVectors::load(dir.path(), &mark()).unwrap();
        store.apply(corpus()).unwrap();
        store
            .apply(vec![
                VectorOp::Delete(id(1)),
                point(4, [1.0, 0.0, 0.0], "a", &[], 41),
                VectorOp::Delete(id(99)),
                VectorOp::Delete(id(5)),
            ])
            .unwrap();
        assert_eq!(store.count(), 3);
        assert_eq!(store.versions(&[id(1), id(4), id(2)]).unwrap(), vec![None, Some(42), Some(21)]);
        let found = store.search(&[1.0, 0.0, 0.0], &VectorFilter::default(), 10).unwrap();
        assert_eq!(ids(&found), vec![4, 2, 3]);
        let wrong = store.apply(vec![VectorOp::Upsert(VectorPoint { vector: vec![1.0; 4], ..upsert_of(6) })]);
        assert!(wrong.is_err(), "another dimension is refused");
    }

    fn upsert_of(n: u8) -> VectorPoint {
        VectorPoint {
            id: id(n),
            vector: vec![0.0; DIM],
            namespace: "a".to_owned(),
            kind: "note".to_owned(),
            tags: vec![],
            updated_at: 0,
            version: 1,
        }
    }

    fn reopen_answers(dir: &Path) -> (Vec<u8>, bool) {
        let (store, intact) = FlatVectors::load(dir, &mark()).unwrap();
        let found = store.search(&[1.0, 0.0, 0.0], &VectorFilter::default(), 10).unwrap();
        store.close();
        (ids(&found), intact)
    }

    #[test]
    fn what_was_applied_survives_a_reopen_through_log_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FlatVectors::load(dir.path(), &mark()).unwrap();
        store.apply(corpus()).unwrap();
        store.apply(vec![VectorOp::Delete(id(3))]).unwrap();
        // a second process is refused while the store is open
        assert!(FlatVectors::load(dir.path(), &mark()).is_err());
        store.close();
        assert_eq!(reopen_answers(dir.path()), (vec![1, 2, 5, 4], true), "from the log");

        let (store, _) = FlatVectors::load(dir.path(), &mark()).unwrap();
        assert!(store.compact(true).unwrap());
        store.apply(vec![VectorOp::Delete(id(1))]).unwrap();
        store.close();
        assert_eq!(reopen_answers(dir.path()), (vec![2, 5, 4], true), "snapshot plus log");
    }

    #[test]
    fn a_torn_log_tail_loses_only_the_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FlatVectors::load(dir.path(), &mark()).unwrap();
        store.apply(corpus()).unwrap();
        store.close();
        let log = dir.path().join(LOG);
        let len = std::fs::metadata(&log).unwrap().len();
        OpenOptions::new().write(true).open(&log).unwrap().set_len(len - 3).unwrap();
        assert_eq!(reopen_answers(dir.path()), (vec![1, 2, 3, 4], true));
        // and the store goes on from the cut
        let (store, _) = FlatVectors::load(dir.path(), &mark()).unwrap();
        store.apply(vec![point(9, [1.0, 0.0, 0.0], "a", &[], 1)]).unwrap();
        store.close();
        assert_eq!(reopen_answers(dir.path()), (vec![1, 9, 2, 3, 4], true));
    }

    #[test]
    fn another_embedder_moves_the_store_aside_and_a_lost_full_text_side_empties_it() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("vectors");
        let (store, created) = FlatVectors::open(&path, &mark(), false).unwrap();
        assert!(created);
        store.apply(corpus()).unwrap();
        store.close();
        let (store, created) = FlatVectors::open(&path, &mark(), false).unwrap();
        assert!(!created && store.count() == 5, "reopened as it was");
        store.close();
        let (store, created) = FlatVectors::open(&path, &mark(), true).unwrap();
        assert!(created && store.count() == 0, "fresh: emptied");
        store.apply(corpus()).unwrap();
        store.close();
        let other = EmbedderMark { name: "other".to_owned(), dim: 2 };
        let (store, created) = FlatVectors::open(&path, &other, false).unwrap();
        assert!(created && store.count() == 0);
        store.close();
        let aside = std::fs::read_dir(home.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name());
        assert!(aside.into_iter().any(|name| name.to_string_lossy().starts_with("vectors.replaced-")));
    }

    #[test]
    fn a_damaged_snapshot_starts_empty_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = FlatVectors::load(dir.path(), &mark()).unwrap();
        store.apply(corpus()).unwrap();
        store.compact(true).unwrap();
        store.close();
        let snapshot = dir.path().join(SNAPSHOT);
        let mut bytes = std::fs::read(&snapshot).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&snapshot, bytes).unwrap();
        assert_eq!(reopen_answers(dir.path()), (vec![], false));
        assert_eq!(reopen_answers(dir.path()), (vec![], true), "rebuilt empty, not damaged again");
    }

    #[test]
    fn dot_products_of_any_length() {
        for len in [0, 1, 7, 8, 9, 384] {
            let a: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let expected: f64 = a.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            let relative = (f64::from(dot(&a, &a)) - expected).abs() / expected.max(1.0);
            assert!(relative < 1e-6, "length {len}: {} vs {expected}", dot(&a, &a));
        }
    }
}
