use crate::helpers::spawn_app;

/// The committed document must be exactly what the code generates.
/// Regenerate with: `cargo run --release -- openapi > openapi/openapi.json`
#[test]
fn committed_openapi_matches_the_code() {
    let generated = gregor::http::openapi_json().unwrap();
    let committed =
        std::fs::read_to_string(crate::helpers::project_root().join("openapi/openapi.json")).unwrap_or_default();
    assert!(
        generated == committed,
        "openapi/openapi.json is stale; regenerate it with `cargo run --release -- openapi > openapi/openapi.json`"
    );
}

#[tokio::test]
async fn served_document_and_swagger_ui() {
    crate::helpers::within(async {
        let app = spawn_app().await;
        let doc: serde_json::Value =
            app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/topics",
            "/v1/topics/{topic}",
            "/v1/topics/{topic}/partitions",
            "/v1/topics/{topic}/partitions/{partition}",
            "/v1/topics/{topic}/partitions/{partition}/offsets",
            "/v1/topics/{topic}/records",
            "/v1/topics/{topic}/partitions/{partition}/records",
            "/healthz",
            "/readyz",
        ] {
            assert!(paths.contains_key(p), "{p} documented");
        }
        let res = app.client.get(app.url("/docs/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.text().await.unwrap().contains("swagger-ui"));
        let res = app.client.get(app.url("/docs/swagger-ui-bundle.js")).send().await.unwrap();
        assert_eq!(res.status(), 200, "Swagger UI assets are served from the binary");
        let res = app.client.get(app.url("/")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let (status, body) = app.get("/healthz").await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
        let (status, _) = app.get("/readyz").await;
        assert_eq!(status, 200);
    })
    .await;
}

/// The bounds the documentation states are the bounds the service enforces.
#[test]
fn documented_bounds_are_the_enforced_ones() {
    use gregor::service::limits;
    let doc = serde_json::to_value(gregor::http::openapi()).unwrap();
    let param = |path: &str, name: &str| -> serde_json::Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} documents {name}"))["schema"]
            .clone()
    };
    let read = "/v1/topics/{topic}/partitions/{partition}/records";
    assert_eq!(param(read, "limit")["maximum"], limits::MAX_RECORDS);
    assert_eq!(param(read, "max_bytes")["maximum"], limits::MAX_READ_BYTES);
    assert_eq!(param(read, "wait_ms")["maximum"], limits::MAX_WAIT_MS);
    let poll = "/v1/groups/{group}/members/{member}/records";
    assert_eq!(param(poll, "max_records")["maximum"], limits::MAX_RECORDS);
    assert_eq!(param(poll, "wait_ms")["maximum"], limits::MAX_WAIT_MS);
}
