use crate::helpers::spawn_app;

/// The committed document must be exactly what the code generates.
/// Regenerate with: `cargo run --release -- openapi > openapi/openapi.json`
#[test]
fn committed_openapi_matches_the_code() {
    let generated = gregor::http::openapi_json().unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json")).unwrap_or_default();
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
