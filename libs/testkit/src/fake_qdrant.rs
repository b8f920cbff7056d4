//! A Qdrant server for tests: Qdrant's own gRPC contract (the `Collections` and
//! `Points` services that `qdrant-client` calls), answered from memory. No Qdrant
//! binary can be installed on the machines that run the suite, so the search
//! service's cluster backend is tested against this instead.
//!
//! It does what the search service uses, with Qdrant's semantics: cosine vectors are
//! normalised when stored and scored by dot product (exact search), keyword matches on
//! strings and lists of strings, float ranges, `must`/`should`/`must_not`, named
//! errors (`NOT_FOUND` for an unknown collection, `INVALID_ARGUMENT` for a wrong
//! dimension). Every other method answers `UNIMPLEMENTED`. [`FakeQdrant::fail_next`]
//! makes the next calls fail `UNAVAILABLE`, as a server that is down does.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ::qdrant_client::qdrant::collections_server::{Collections, CollectionsServer};
use ::qdrant_client::qdrant::condition::ConditionOneOf;
use ::qdrant_client::qdrant::r#match::MatchValue;
use ::qdrant_client::qdrant::point_id::PointIdOptions;
use ::qdrant_client::qdrant::points_selector::PointsSelectorOneOf;
use ::qdrant_client::qdrant::points_server::{Points, PointsServer};
use ::qdrant_client::qdrant::points_update_operation::Operation;
use ::qdrant_client::qdrant::value::Kind;
use ::qdrant_client::qdrant::vectors::VectorsOptions;
use ::qdrant_client::qdrant::vectors_config::Config;
use ::qdrant_client::qdrant::with_payload_selector::SelectorOptions;
use ::qdrant_client::qdrant::*;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

type Answer<T> = Result<Response<T>, Status>;

struct Point {
    /// normalised: cosine similarity is the dot product
    vector: Vec<f32>,
    payload: HashMap<String, Value>,
}

struct Collection {
    dim: usize,
    /// by id as text: UUIDs and numbers alike
    points: BTreeMap<String, Point>,
}

#[derive(Default)]
struct State {
    collections: Mutex<HashMap<String, Collection>>,
    fail_next: AtomicUsize,
    calls: AtomicUsize,
}

/// A running fake; it stops when dropped.
pub struct FakeQdrant {
    pub url: String,
    state: Arc<State>,
    stop: CancellationToken,
}

impl FakeQdrant {
    /// Serves on 127.0.0.1 on a free port, on the current runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(CollectionsServer::new(Fake(state.clone())))
            .add_service(PointsServer::new(Fake(state.clone())).max_decoding_message_size(64 << 20))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        Ok(Self { url, state, stop })
    }

    /// The next `calls` calls answer `UNAVAILABLE`.
    pub fn fail_next(&self, calls: usize) {
        self.state.fail_next.store(calls, Ordering::SeqCst);
    }

    /// Calls answered so far, failed ones included.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Points held by every collection together.
    pub fn points(&self) -> usize {
        self.state.collections.lock().expect("fake qdrant lock").values().map(|c| c.points.len()).sum()
    }

    pub fn collections(&self) -> Vec<String> {
        self.state.collections.lock().expect("fake qdrant lock").keys().cloned().collect()
    }
}

impl Drop for FakeQdrant {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct Fake(Arc<State>);

impl Fake {
    fn enter(&self) -> Result<(), Status> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let failing = self.0.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match failing {
            Ok(_) => Err(Status::unavailable("fake qdrant: told to fail")),
            Err(_) => Ok(()),
        }
    }

    fn with<T>(&self, name: &str, work: impl FnOnce(&mut Collection) -> Result<T, Status>) -> Result<T, Status> {
        self.enter()?;
        let mut collections = self.0.collections.lock().expect("fake qdrant lock");
        let collection = collections
            .get_mut(name)
            .ok_or_else(|| Status::not_found(format!("Not found: Collection `{name}` doesn't exist!")))?;
        work(collection)
    }
}

fn id_text(id: &PointId) -> Result<String, Status> {
    match &id.point_id_options {
        Some(PointIdOptions::Uuid(uuid)) => {
            let parsed: uuid::Uuid =
                uuid.parse().map_err(|_| Status::invalid_argument(format!("Unable to parse UUID: {uuid}")))?;
            Ok(parsed.to_string())
        }
        Some(PointIdOptions::Num(n)) => Ok(n.to_string()),
        None => Err(Status::invalid_argument("Malformed PointId type")),
    }
}

fn point_id(text: &str) -> PointId {
    match text.parse::<u64>() {
        Ok(n) => PointId { point_id_options: Some(PointIdOptions::Num(n)) },
        Err(_) => PointId { point_id_options: Some(PointIdOptions::Uuid(text.to_owned())) },
    }
}

fn dense(vectors: Option<Vectors>) -> Result<Vec<f32>, Status> {
    #[allow(deprecated)]
    match vectors.and_then(|v| v.vectors_options) {
        Some(VectorsOptions::Vector(vector)) => match vector.vector {
            Some(vector::Vector::Dense(dense)) => Ok(dense.data),
            None if !vector.data.is_empty() => Ok(vector.data),
            _ => Err(Status::invalid_argument("Wrong input: only dense vectors are served")),
        },
        _ => Err(Status::invalid_argument("Wrong input: a point needs its unnamed dense vector")),
    }
}

fn normalised(mut vector: Vec<f32>, dim: usize) -> Result<Vec<f32>, Status> {
    if vector.len() != dim {
        return Err(Status::invalid_argument(format!(
            "Wrong input: Vector dimension error: expected dim: {dim}, got {}",
            vector.len()
        )));
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > f32::EPSILON {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(vector)
}

fn ids_of(selector: Option<PointsSelector>) -> Result<Vec<String>, Status> {
    match selector.and_then(|s| s.points_selector_one_of) {
        Some(PointsSelectorOneOf::Points(list)) => list.ids.iter().map(id_text).collect(),
        _ => Err(Status::unimplemented("fake qdrant: only deletes by point ids are served")),
    }
}

fn upsert(collection: &mut Collection, points: Vec<PointStruct>) -> Result<(), Status> {
    // validated first: a failed request changes nothing
    let mut checked = Vec::with_capacity(points.len());
    for point in points {
        let id = id_text(&point.id.ok_or_else(|| Status::invalid_argument("a point without an id"))?)?;
        let vector = normalised(dense(point.vectors)?, collection.dim)?;
        checked.push((id, Point { vector, payload: point.payload }));
    }
    collection.points.extend(checked);
    Ok(())
}

fn strings(value: &Value) -> Vec<&str> {
    match &value.kind {
        Some(Kind::StringValue(s)) => vec![s.as_str()],
        Some(Kind::ListValue(list)) => list.values.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

fn number(value: &Value) -> Option<f64> {
    match value.kind {
        Some(Kind::DoubleValue(x)) => Some(x),
        Some(Kind::IntegerValue(n)) => Some(n as f64),
        _ => None,
    }
}

fn passes(point: &Point, filter: &Filter) -> Result<bool, Status> {
    let all = |conditions: &[Condition]| -> Result<bool, Status> {
        for condition in conditions {
            if !holds(point, condition)? {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let mut should_ok = filter.should.is_empty();
    for condition in &filter.should {
        if holds(point, condition)? {
            should_ok = true;
            break;
        }
    }
    let mut none_of = true;
    for condition in &filter.must_not {
        if holds(point, condition)? {
            none_of = false;
            break;
        }
    }
    Ok(all(&filter.must)? && should_ok && none_of)
}

fn holds(point: &Point, condition: &Condition) -> Result<bool, Status> {
    match &condition.condition_one_of {
        Some(ConditionOneOf::Filter(filter)) => passes(point, filter),
        Some(ConditionOneOf::Field(field)) => {
            let value = point.payload.get(&field.key);
            if let Some(r#match) = &field.r#match {
                let values = value.map(strings).unwrap_or_default();
                return match &r#match.match_value {
                    Some(MatchValue::Keyword(keyword)) => Ok(values.contains(&keyword.as_str())),
                    Some(MatchValue::Keywords(any)) => Ok(any.strings.iter().any(|k| values.contains(&k.as_str()))),
                    _ => Err(Status::unimplemented("fake qdrant: only keyword matches are served")),
                };
            }
            if let Some(range) = &field.range {
                let Some(x) = value.and_then(number) else { return Ok(false) };
                return Ok(range.gt.is_none_or(|b| x > b)
                    && range.gte.is_none_or(|b| x >= b)
                    && range.lt.is_none_or(|b| x < b)
                    && range.lte.is_none_or(|b| x <= b));
            }
            Err(Status::unimplemented("fake qdrant: only match and range conditions are served"))
        }
        _ => Err(Status::unimplemented("fake qdrant: only field and nested filter conditions are served")),
    }
}

fn done() -> UpdateResult {
    UpdateResult { status: UpdateStatus::Completed.into(), ..Default::default() }
}

#[tonic::async_trait]
impl Collections for Fake {
    async fn collection_exists(&self, request: Request<CollectionExistsRequest>) -> Answer<CollectionExistsResponse> {
        self.enter()?;
        let exists =
            self.0.collections.lock().expect("fake qdrant lock").contains_key(&request.get_ref().collection_name);
        Ok(Response::new(CollectionExistsResponse { result: Some(CollectionExists { exists }), time: 0.0 }))
    }

    async fn create(&self, request: Request<CreateCollection>) -> Answer<CollectionOperationResponse> {
        self.enter()?;
        let create = request.into_inner();
        let params = match create.vectors_config.and_then(|c| c.config) {
            Some(Config::Params(params)) => params,
            _ => return Err(Status::invalid_argument("fake qdrant: one unnamed vector per point is served")),
        };
        if params.distance != i32::from(Distance::Cosine) {
            return Err(Status::unimplemented("fake qdrant: only cosine distance is served"));
        }
        let mut collections = self.0.collections.lock().expect("fake qdrant lock");
        if collections.contains_key(&create.collection_name) {
            return Err(Status::already_exists(format!(
                "Wrong input: Collection `{}` already exists!",
                create.collection_name
            )));
        }
        let collection = Collection { dim: params.size as usize, points: BTreeMap::new() };
        collections.insert(create.collection_name, collection);
        Ok(Response::new(CollectionOperationResponse { result: true, time: 0.0 }))
    }

    async fn delete(&self, request: Request<DeleteCollection>) -> Answer<CollectionOperationResponse> {
        self.enter()?;
        let removed =
            self.0.collections.lock().expect("fake qdrant lock").remove(&request.get_ref().collection_name).is_some();
        Ok(Response::new(CollectionOperationResponse { result: removed, time: 0.0 }))
    }

    async fn list(&self, _: Request<ListCollectionsRequest>) -> Answer<ListCollectionsResponse> {
        self.enter()?;
        let names = self.0.collections.lock().expect("fake qdrant lock").keys().cloned().collect::<Vec<_>>();
        let collections = names.into_iter().map(|name| CollectionDescription { name }).collect();
        Ok(Response::new(ListCollectionsResponse { collections, time: 0.0 }))
    }

    async fn get(&self, _: Request<GetCollectionInfoRequest>) -> Answer<GetCollectionInfoResponse> {
        Err(unserved("Collections/Get"))
    }
    async fn update(&self, _: Request<UpdateCollection>) -> Answer<CollectionOperationResponse> {
        Err(unserved("Collections/Update"))
    }
    async fn update_aliases(&self, _: Request<ChangeAliases>) -> Answer<CollectionOperationResponse> {
        Err(unserved("Collections/UpdateAliases"))
    }
    async fn list_collection_aliases(&self, _: Request<ListCollectionAliasesRequest>) -> Answer<ListAliasesResponse> {
        Err(unserved("Collections/ListCollectionAliases"))
    }
    async fn list_aliases(&self, _: Request<ListAliasesRequest>) -> Answer<ListAliasesResponse> {
        Err(unserved("Collections/ListAliases"))
    }
    async fn collection_cluster_info(
        &self,
        _: Request<CollectionClusterInfoRequest>,
    ) -> Answer<CollectionClusterInfoResponse> {
        Err(unserved("Collections/CollectionClusterInfo"))
    }
    async fn update_collection_cluster_setup(
        &self,
        _: Request<UpdateCollectionClusterSetupRequest>,
    ) -> Answer<UpdateCollectionClusterSetupResponse> {
        Err(unserved("Collections/UpdateCollectionClusterSetup"))
    }
    async fn create_shard_key(&self, _: Request<CreateShardKeyRequest>) -> Answer<CreateShardKeyResponse> {
        Err(unserved("Collections/CreateShardKey"))
    }
    async fn delete_shard_key(&self, _: Request<DeleteShardKeyRequest>) -> Answer<DeleteShardKeyResponse> {
        Err(unserved("Collections/DeleteShardKey"))
    }
    async fn list_shard_keys(&self, _: Request<ListShardKeysRequest>) -> Answer<ListShardKeysResponse> {
        Err(unserved("Collections/ListShardKeys"))
    }
}

fn unserved(method: &str) -> Status {
    Status::unimplemented(format!("fake qdrant: {method} is not served"))
}

#[tonic::async_trait]
impl Points for Fake {
    async fn upsert(&self, request: Request<UpsertPoints>) -> Answer<PointsOperationResponse> {
        let request = request.into_inner();
        self.with(&request.collection_name, |collection| upsert(collection, request.points))?;
        Ok(Response::new(PointsOperationResponse { result: Some(done()), ..Default::default() }))
    }

    async fn delete(&self, request: Request<DeletePoints>) -> Answer<PointsOperationResponse> {
        let request = request.into_inner();
        let ids = ids_of(request.points)?;
        self.with(&request.collection_name, |collection| {
            ids.iter().for_each(|id| drop(collection.points.remove(id)));
            Ok(())
        })?;
        Ok(Response::new(PointsOperationResponse { result: Some(done()), ..Default::default() }))
    }

    async fn update_batch(&self, request: Request<UpdateBatchPoints>) -> Answer<UpdateBatchResponse> {
        let request = request.into_inner();
        let results = self.with(&request.collection_name, |collection| {
            let mut results = Vec::with_capacity(request.operations.len());
            for operation in request.operations {
                match operation.operation {
                    Some(Operation::Upsert(list)) => upsert(collection, list.points)?,
                    Some(Operation::DeletePoints(delete)) => {
                        for id in ids_of(delete.points)? {
                            collection.points.remove(&id);
                        }
                    }
                    _ => return Err(Status::unimplemented("fake qdrant: batches of upserts and deletes are served")),
                }
                results.push(done());
            }
            Ok(results)
        })?;
        Ok(Response::new(UpdateBatchResponse { result: results, ..Default::default() }))
    }

    async fn get(&self, request: Request<GetPoints>) -> Answer<GetResponse> {
        let request = request.into_inner();
        let ids = request.ids.iter().map(id_text).collect::<Result<Vec<_>, _>>()?;
        // as the server does: `true` sends every payload field, an include list those
        let wanted = |key: &str| match request.with_payload.as_ref().and_then(|w| w.selector_options.as_ref()) {
            Some(SelectorOptions::Enable(all)) => *all,
            Some(SelectorOptions::Include(include)) => include.fields.iter().any(|f| f == key),
            Some(SelectorOptions::Exclude(exclude)) => !exclude.fields.iter().any(|f| f == key),
            None => false,
        };
        let result = self.with(&request.collection_name, |collection| {
            Ok(ids
                .iter()
                .filter_map(|id| {
                    let point = collection.points.get(id)?;
                    let payload = point
                        .payload
                        .iter()
                        .filter(|(key, _)| wanted(key))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    Some(RetrievedPoint { id: Some(point_id(id)), payload, ..Default::default() })
                })
                .collect())
        })?;
        Ok(Response::new(GetResponse { result, ..Default::default() }))
    }

    async fn query(&self, request: Request<QueryPoints>) -> Answer<QueryResponse> {
        let request = request.into_inner();
        let vector = match request.query.and_then(|q| q.variant) {
            Some(query::Variant::Nearest(VectorInput { variant: Some(vector_input::Variant::Dense(dense)) })) => {
                dense.data
            }
            _ => return Err(Status::unimplemented("fake qdrant: only nearest queries by a dense vector are served")),
        };
        let limit = request.limit.unwrap_or(10) as usize;
        let offset = request.offset.unwrap_or(0) as usize;
        let result = self.with(&request.collection_name, |collection| {
            let query = normalised(vector, collection.dim)?;
            let mut scored = Vec::new();
            for (id, point) in &collection.points {
                if let Some(filter) = &request.filter
                    && !passes(point, filter)?
                {
                    continue;
                }
                let score = point.vector.iter().zip(&query).map(|(a, b)| a * b).sum::<f32>();
                if request.score_threshold.is_some_and(|floor| score < floor) {
                    continue;
                }
                scored.push((score, id));
            }
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            Ok(scored
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(|(score, id)| ScoredPoint { id: Some(point_id(id)), score, ..Default::default() })
                .collect())
        })?;
        Ok(Response::new(QueryResponse { result, ..Default::default() }))
    }

    async fn count(&self, request: Request<CountPoints>) -> Answer<CountResponse> {
        let request = request.into_inner();
        let count = self.with(&request.collection_name, |collection| {
            let mut count = 0;
            for point in collection.points.values() {
                if request.filter.as_ref().map_or(Ok(true), |filter| passes(point, filter))? {
                    count += 1;
                }
            }
            Ok(count)
        })?;
        Ok(Response::new(CountResponse { result: Some(CountResult { count }), ..Default::default() }))
    }

    async fn create_field_index(
        &self,
        request: Request<CreateFieldIndexCollection>,
    ) -> Answer<PointsOperationResponse> {
        // the fake scans: an index changes nothing but must be asked for a collection
        // that exists
        self.with(&request.get_ref().collection_name, |_| Ok(()))?;
        Ok(Response::new(PointsOperationResponse { result: Some(done()), ..Default::default() }))
    }

    async fn update_vectors(&self, _: Request<UpdatePointVectors>) -> Answer<PointsOperationResponse> {
        Err(unserved("Points/UpdateVectors"))
    }
    async fn delete_vectors(&self, _: Request<DeletePointVectors>) -> Answer<PointsOperationResponse> {
        Err(unserved("Points/DeleteVectors"))
    }
    async fn set_payload(&self, _: Request<SetPayloadPoints>) -> Answer<PointsOperationResponse> {
        Err(unserved("Points/SetPayload"))
    }
    async fn overwrite_payload(&self, _: Request<SetPayloadPoints>) -> Answer<PointsOperationResponse> {
        Err(unserved("Points/OverwritePayload"))
    }
    async fn delete_payload(&self, _: Request<DeletePayloadPoints>) -> Answer<PointsOperationResponse> {
        Err(unserved("Points/DeletePayload"))
    }
    async fn clear_payload(&self, _: Request<ClearPayloadPoints>) -> Answer<PointsOperationResponse> {
        Err(unserved("Points/ClearPayload"))
    }
    async fn delete_field_index(&self, _: Request<DeleteFieldIndexCollection>) -> Answer<PointsOperationResponse> {
        Err(unserved("Points/DeleteFieldIndex"))
    }
    async fn create_vector_name(&self, _: Request<CreateVectorNameRequest>) -> Answer<PointsOperationResponse> {
        Err(unserved("Points/CreateVectorName"))
    }
    async fn delete_vector_name(&self, _: Request<DeleteVectorNameRequest>) -> Answer<PointsOperationResponse> {
        Err(unserved("Points/DeleteVectorName"))
    }
    async fn search(&self, _: Request<SearchPoints>) -> Answer<SearchResponse> {
        Err(unserved("Points/Search"))
    }
    async fn search_batch(&self, _: Request<SearchBatchPoints>) -> Answer<SearchBatchResponse> {
        Err(unserved("Points/SearchBatch"))
    }
    async fn search_groups(&self, _: Request<SearchPointGroups>) -> Answer<SearchGroupsResponse> {
        Err(unserved("Points/SearchGroups"))
    }
    async fn scroll(&self, _: Request<ScrollPoints>) -> Answer<ScrollResponse> {
        Err(unserved("Points/Scroll"))
    }
    async fn recommend(&self, _: Request<RecommendPoints>) -> Answer<RecommendResponse> {
        Err(unserved("Points/Recommend"))
    }
    async fn recommend_batch(&self, _: Request<RecommendBatchPoints>) -> Answer<RecommendBatchResponse> {
        Err(unserved("Points/RecommendBatch"))
    }
    async fn recommend_groups(&self, _: Request<RecommendPointGroups>) -> Answer<RecommendGroupsResponse> {
        Err(unserved("Points/RecommendGroups"))
    }
    async fn discover(&self, _: Request<DiscoverPoints>) -> Answer<DiscoverResponse> {
        Err(unserved("Points/Discover"))
    }
    async fn discover_batch(&self, _: Request<DiscoverBatchPoints>) -> Answer<DiscoverBatchResponse> {
        Err(unserved("Points/DiscoverBatch"))
    }
    async fn query_batch(&self, _: Request<QueryBatchPoints>) -> Answer<QueryBatchResponse> {
        Err(unserved("Points/QueryBatch"))
    }
    async fn query_groups(&self, _: Request<QueryPointGroups>) -> Answer<QueryGroupsResponse> {
        Err(unserved("Points/QueryGroups"))
    }
    async fn facet(&self, _: Request<FacetCounts>) -> Answer<FacetResponse> {
        Err(unserved("Points/Facet"))
    }
    async fn search_matrix_pairs(&self, _: Request<SearchMatrixPoints>) -> Answer<SearchMatrixPairsResponse> {
        Err(unserved("Points/SearchMatrixPairs"))
    }
    async fn search_matrix_offsets(&self, _: Request<SearchMatrixPoints>) -> Answer<SearchMatrixOffsetsResponse> {
        Err(unserved("Points/SearchMatrixOffsets"))
    }
}
