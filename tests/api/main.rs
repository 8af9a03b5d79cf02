//! What a user reaches for, against a real server: typed rows, borrowed binds, the idempotent insert
//! that answers the same both times, and the query span's OpenTelemetry attributes.

#[path = "../../examples/signup/app.rs"]
mod app;
mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use rampart::layers::Classification;
use rampart::postgres::Row;
use rampart::testing::{Cluster, until_async};
use rampart::{Db, DecodeError, ErrorKind, FromRow, Query, Stack};
use serde_json::Value;
use tower::ServiceExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

async fn db() -> (Cluster, Db) {
    let cluster = Cluster::new().await.unwrap();
    let db = Stack::server(&cluster.url()).build().unwrap();
    (cluster, db)
}

#[derive(Debug, PartialEq)]
struct User {
    id: i64,
    email: String,
}

impl FromRow for User {
    fn from_row(row: &Row) -> Result<Self, DecodeError> {
        Ok(User {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
        })
    }
}

#[tokio::test]
async fn rows_map_to_types_and_a_row_that_does_not_fit_is_a_typed_permanent_error() {
    let (_cluster, db) = db().await;
    let two = "SELECT * FROM (VALUES (1::int8, 'ada@example.com'), (2, 'bob@example.com')) AS u(id, email) WHERE id <= $1";

    let answer = db.run(Query::read(two).bind(1i64)).await.unwrap();
    let user: User = answer.one().unwrap();
    assert_eq!(
        user,
        User {
            id: 1,
            email: "ada@example.com".into()
        }
    );
    let (id, email): (i64, String) = answer.one().unwrap();
    assert_eq!((id, email.as_str()), (1, "ada@example.com"));
    assert_eq!(answer.opt::<User>().unwrap().map(|u| u.id), Some(1));

    let none = db.run(Query::read(two).bind(0i64)).await.unwrap();
    assert_eq!(none.opt::<User>().unwrap(), None);
    assert!(none.all::<User>().unwrap().is_empty());
    let err = none.one::<User>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RowCount, "{err}");
    assert_eq!(err.kind().as_str(), "row_count");
    assert_eq!(err.classification(), Classification::Permanent);
    assert!(!err.is_outcome_unknown());

    let both = db.run(Query::read(two).bind(2i64)).await.unwrap();
    let users: Vec<User> = both.all().unwrap();
    assert_eq!(users.iter().map(|u| u.id).collect::<Vec<_>>(), [1, 2]);
    for err in [
        both.one::<User>().unwrap_err(),
        both.opt::<User>().unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::RowCount, "{err}");
        assert!(err.to_string().contains("2 rows"), "{err}");
    }

    // A column of another type, a missing column: errors, never a panic.
    let err = answer.one::<(i32, String)>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert_eq!(err.kind().as_str(), "decode");
    assert_eq!(err.classification(), Classification::Permanent);
    let renamed = db
        .run(Query::read("SELECT 1::int8 AS id, 'x' AS mail"))
        .await
        .unwrap();
    let err = renamed.one::<User>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(err.to_string().contains("email"), "names the column: {err}");
    let err = renamed.one::<(i64, String, bool)>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "a column too many asked for");

    // Scalars: one row, one column.
    let n: i64 = db
        .run(Query::read("SELECT count(*) FROM generate_series(1, 5)"))
        .await
        .unwrap()
        .scalar()
        .unwrap();
    assert_eq!(n, 5);
    let err = answer.scalar::<i64>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "two columns: {err}");
    let err = none.scalar::<i64>().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RowCount);
    let null: Option<String> = db
        .run(Query::read("SELECT NULL::text"))
        .await
        .unwrap()
        .scalar()
        .unwrap();
    assert_eq!(null, None);
    let err = db
        .run(Query::read("SELECT NULL::text"))
        .await
        .unwrap()
        .scalar::<String>()
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Decode,
        "a NULL is not a String: {err}"
    );

    let eight: (i16, i32, i64, f64, bool, String, Vec<u8>, Option<i32>) = db
        .run(Query::read(
            "SELECT 1::int2, 2::int4, 3::int8, 4.5::float8, true, 'six', '\\x07'::bytea, NULL::int4",
        ))
        .await
        .unwrap()
        .one()
        .unwrap();
    assert_eq!(eight, (1, 2, 3, 4.5, true, "six".into(), vec![7], None));
}

/// Built from borrowed data only: the query must own copies, as the data is gone when it runs.
fn lookup(email: &str, blob: &[u8], ids: &[i64], note: Option<&str>) -> Query {
    Query::read("SELECT $1::text, $2::bytea, $3::int8[], $4::text")
        .bind(email)
        .bind(blob)
        .bind(ids)
        .bind(note)
}

#[tokio::test]
async fn borrowed_values_bind_and_outlive_their_borrow() {
    let (_cluster, db) = db().await;
    let query = {
        let email = String::from("ada@example.com");
        let blob = vec![0u8, 1, 255];
        let ids = vec![3i64, 5];
        let note = String::from("hi");
        lookup(&email, &blob, &ids, Some(&note))
    };
    let (email, blob, ids, note): (String, Vec<u8>, Vec<i64>, Option<String>) =
        db.run(query).await.unwrap().one().unwrap();
    assert_eq!(email, "ada@example.com");
    assert_eq!(blob, [0, 1, 255]);
    assert_eq!(ids, [3, 5]);
    assert_eq!(note.as_deref(), Some("hi"));

    // Owned values as before, `Cow`, references to scalars, and any other ToSql type by value.
    let name = std::borrow::Cow::Borrowed("cow");
    let numbers = [41i32];
    let n: &i32 = &numbers[0];
    let (a, b, c): (String, i32, String) = db
        .run(
            Query::read("SELECT $1::text, $2::int4 + 1, $3::text")
                .bind(name)
                .bind(n)
                .bind_value(String::from("by value")),
        )
        .await
        .unwrap()
        .one()
        .unwrap();
    assert_eq!((a.as_str(), b, c.as_str()), ("cow", 42, "by value"));
}

const SIGNUPS: &str = "CREATE TABLE signups (
    id bigserial PRIMARY KEY,
    email text NOT NULL,
    request_id text NOT NULL UNIQUE
)";

/// The README's sign-up: answers with the row's id on the first run and on every replay.
fn signup(email: &str, request_id: &str) -> Query {
    Query::write(
        "INSERT INTO signups (email, request_id) VALUES ($1, $2) \
         ON CONFLICT (request_id) DO UPDATE SET request_id = EXCLUDED.request_id \
         WHERE signups.email = EXCLUDED.email \
         RETURNING id",
    )
    .bind(email)
    .bind(request_id)
    .idempotency_key(request_id)
}

#[tokio::test]
async fn the_idempotent_insert_returns_its_row_on_a_replay_too() {
    let (_cluster, db) = db().await;
    db.run(Query::write(SIGNUPS)).await.unwrap();

    let first: i64 = db
        .run(signup("ada@example.com", "req-1"))
        .await
        .unwrap()
        .scalar()
        .unwrap();
    let replay: i64 = db
        .run(signup("ada@example.com", "req-1"))
        .await
        .unwrap()
        .scalar()
        .unwrap();
    assert_eq!(first, replay, "the replay answers with the first row's id");
    let other: i64 = db
        .run(signup("bob@example.com", "req-2"))
        .await
        .unwrap()
        .scalar()
        .unwrap();
    assert_ne!(other, first);
    let rows: i64 = db
        .run(Query::read(
            "SELECT count(*) FROM signups WHERE request_id = 'req-1'",
        ))
        .await
        .unwrap()
        .scalar()
        .unwrap();
    assert_eq!(rows, 1, "one row for the key");

    // The key reused for another email returns nothing: the caller's mistake, told apart.
    let reused = db.run(signup("eve@example.com", "req-1")).await.unwrap();
    assert_eq!(reused.opt::<(i64,)>().unwrap(), None);

    // What the README used to show: `DO NOTHING` answers a replay with no row at all.
    let replay = db
        .run(
            Query::write(
                "INSERT INTO signups (email, request_id) VALUES ($1, $2) \
                 ON CONFLICT (request_id) DO NOTHING RETURNING id",
            )
            .bind("ada@example.com")
            .bind("req-1"),
        )
        .await
        .unwrap();
    assert_eq!(
        replay.scalar::<i64>().unwrap_err().kind(),
        ErrorKind::RowCount
    );
}

/// The fields of every `rampart.query` span, as recorded.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<HashMap<String, String>>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Index of a span's fields in [`Spans`], kept in the span's extensions.
struct Slot(usize);

impl<S> Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "rampart.query" {
            return;
        }
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push(fields);
        ctx.span(id)
            .unwrap()
            .extensions_mut()
            .insert(Slot(spans.len() - 1));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        if let Some(Slot(i)) = span.extensions().get::<Slot>() {
            values.record(&mut Fields(&mut self.0.lock().unwrap()[*i]));
        }
    }
}

#[tokio::test]
async fn the_query_span_carries_the_opentelemetry_database_attributes() {
    let (cluster, db) = db().await;
    let spans = Spans::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));

    db.run(Query::read("select $1::text").bind("secret-value"))
        .await
        .unwrap();
    db.run(Query::read("SELECT * FROM missing_table"))
        .await
        .unwrap_err();
    db.clone()
        .record_statements(true)
        .run(Query::read("SELECT 1"))
        .await
        .unwrap();

    let spans = spans.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 3, "{spans:?}");
    let (ok, failed, recorded) = (&spans[0], &spans[1], &spans[2]);
    let field = |span: &HashMap<String, String>, name: &str| span.get(name).cloned();
    assert_eq!(field(ok, "db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(field(ok, "db.operation.name").as_deref(), Some("SELECT"));
    assert_eq!(field(ok, "db.namespace").as_deref(), Some("postgres"));
    assert_eq!(field(ok, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(field(ok, "server.port"), Some(cluster.port().to_string()));
    assert_eq!(field(ok, "otel.kind").as_deref(), Some("client"));
    assert_eq!(field(ok, "error.type"), None, "no error on success");
    assert_eq!(
        field(ok, "db.query.text"),
        None,
        "no statement text unless asked for"
    );
    for span in &spans {
        assert!(
            span.values().all(|v| !v.contains("secret-value")),
            "no parameter ever: {span:?}"
        );
    }

    assert_eq!(field(failed, "error.type").as_deref(), Some("db"));
    assert_eq!(
        field(failed, "db.response.status_code").as_deref(),
        Some("42P01")
    );
    assert_eq!(field(failed, "otel.status_code").as_deref(), Some("ERROR"));
    assert_eq!(field(failed, "db.query.text"), None);

    assert_eq!(
        field(recorded, "db.query.text").as_deref(),
        Some("SELECT 1")
    );
}

/// One request to the sign-up example's router: its status, `Retry-After`, and JSON body.
async fn call(
    db: &Db,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = app::app(db.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn the_signup_example_answers_a_replay_as_the_first_request_and_maps_errors() {
    let (_cluster, db) = db().await;
    app::prepare(&db).await.unwrap();
    let ada = serde_json::json!({"email": "ada@example.com", "request_id": "req-1"});

    let (status, _, first) = call(&db, Method::POST, "/signup", Some(ada.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, _, replay) = call(&db, Method::POST, "/signup", Some(ada)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first, replay, "a replay answers as the first request did");
    let (status, _, found) = call(&db, Method::GET, "/signup/req-1", None).await;
    assert_eq!((status, &found), (StatusCode::OK, &first));

    let reused = serde_json::json!({"email": "eve@example.com", "request_id": "req-1"});
    let (status, _, body) = call(&db, Method::POST, "/signup", Some(reused)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let again = serde_json::json!({"email": "ada@example.com", "request_id": "req-2"});
    let (status, _, body) = call(&db, Method::POST, "/signup", Some(again)).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::CONFLICT, &Value::from("conflict"))
    );
    let bad = serde_json::json!({"email": "nope", "request_id": "req-3"});
    let (status, _, _) = call(&db, Method::POST, "/signup", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&db, Method::GET, "/signup/req-9", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let users: i64 = db
        .run(Query::read("SELECT count(*) FROM rampart_signup_users"))
        .await
        .unwrap()
        .scalar()
        .unwrap();
    assert_eq!(users, 1);

    // Refused without trying: 503 with a time to come back.
    db.breaker().unwrap().force_open();
    let (status, retry_after, body) = call(&db, Method::GET, "/signup/req-1", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "circuit_open");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
}

/// The value of the one sample of `name` whose line holds every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn the_stack_publishes_its_own_gauges() {
    let (cluster, db) = db().await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    db.run(Query::read("SELECT 1")).await.unwrap();
    metrics::with_local_recorder(&recorder, || db.publish_metrics());
    let text = handle.render();
    let server = format!("127.0.0.1:{}", cluster.port());
    assert_eq!(
        sample(&text, "rampart_pool_connections", &[&server]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "rampart_pool_idle", &[&server]), Some(1.0));
    assert_eq!(sample(&text, "rampart_pool_in_use", &[&server]), Some(0.0));
    assert_eq!(sample(&text, "rampart_pool_waiting", &[&server]), Some(0.0));
    assert!(sample(&text, "rampart_pool_max_size", &[&server]).is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(&text, "rampart_pool_created_total", &[&server]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "rampart_breaker_state", &[r#"state="closed""#]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "rampart_breaker_state", &[r#"state="open""#]),
        Some(0.0)
    );
    assert!(
        text.contains("# HELP rampart_pool_idle"),
        "described: {text}"
    );
    assert!(
        !text.contains("rampart_mux_"),
        "no multiplexer, no multiplexer figures"
    );

    db.breaker().unwrap().force_open();
    metrics::with_local_recorder(&recorder, || db.publish_metrics());
    let text = handle.render();
    assert_eq!(
        sample(&text, "rampart_breaker_state", &[r#"state="forced_open""#]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "rampart_breaker_state", &[r#"state="closed""#]),
        Some(0.0)
    );

    let mux = Stack::server(&cluster.url())
        .multiplex(rampart::MuxConfig::default())
        .build()
        .unwrap();
    mux.run(Query::read("SELECT 1")).await.unwrap();
    metrics::with_local_recorder(&recorder, || mux.publish_metrics());
    let text = handle.render();
    assert!(
        sample(&text, "rampart_mux_connections", &[&server]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // The first statement may have spilled to the pool while the shared connection was being made.
    let routed = ["rampart_mux_shared_total", "rampart_mux_spilled_total"]
        .map(|name| sample(&text, name, &[&server]).unwrap_or_default());
    assert!(routed.iter().sum::<f64>() >= 1.0, "{text}");
    assert!(sample(&text, "rampart_mux_in_flight", &[&server]).is_some());
}

#[tokio::test]
async fn the_publisher_keeps_the_gauges_current_until_dropped() {
    let (cluster, db) = db().await;
    // The only test of this binary with a global recorder: the publisher's task runs on its own.
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let server = format!("127.0.0.1:{}", cluster.port());
    let publisher = db.publish_metrics_every(std::time::Duration::from_millis(20));
    until_async("the pool's gauges are published", || {
        let text = handle.render();
        let found = sample(&text, "rampart_pool_connections", &[&server]) == Some(0.0);
        async move { found }
    })
    .await;
    db.run(Query::read("SELECT 1")).await.unwrap();
    until_async("the new connection is counted", || {
        let text = handle.render();
        let found = sample(&text, "rampart_pool_connections", &[&server]) == Some(1.0);
        async move { found }
    })
    .await;
    drop(publisher);
}

#[tokio::test]
async fn the_idempotent_insert_returns_its_row_through_the_stacks_own_replay() {
    let cluster = Cluster::new().await.unwrap();
    let direct = Stack::server(&cluster.url()).build().unwrap();
    direct.run(Query::write(SIGNUPS)).await.unwrap();
    let proxy = rampart::testing::FaultProxy::start(cluster.addr())
        .await
        .unwrap();
    let db = Stack::server(&proxy.url(&cluster)).build().unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();

    // The link is reset while the insert runs (2 s: room for a loaded machine between seeing it run and
    // the reset): the stack replays it (it carries a key). Whether or not the first run committed, the
    // replay answers with the key's row.
    let insert = Query::write(
        "INSERT INTO signups (email, request_id) SELECT $1, $2 FROM pg_sleep(2) \
         ON CONFLICT (request_id) DO UPDATE SET request_id = EXCLUDED.request_id \
         WHERE signups.email = EXCLUDED.email \
         RETURNING id /* api-replayed */",
    )
    .bind("ada@example.com")
    .bind("req-r")
    .idempotency_key("req-r");
    let write = db.run(insert);
    let reset = async {
        until_async("the insert runs on the server", || {
            let direct = direct.clone();
            async move {
                direct
                    .run(Query::read(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE query LIKE '%api-replayed%' AND state = 'active' AND wait_event = 'PgSleep' \
                         AND pid <> pg_backend_pid()",
                    ))
                    .await
                    .and_then(|r| r.scalar::<i64>())
                    .is_ok_and(|n| n >= 1)
            }
        })
        .await;
        proxy.reset_all();
    };
    let (result, ()) = tokio::join!(write, reset);
    let answer = result.expect("a keyed write is replayed after a lost connection");
    let id: i64 = answer.scalar().expect("the replay returns the row");
    let stored: Vec<(i64,)> = direct
        .run(Query::read(
            "SELECT id FROM signups WHERE request_id = 'req-r'",
        ))
        .await
        .unwrap()
        .all()
        .unwrap();
    assert_eq!(stored, [(id,)], "one row, the one answered");
    assert!(db.retries() >= 1, "it was a replay");
}
