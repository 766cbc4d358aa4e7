//! The code map's invariants that a reader can check by grep, checked by the
//! tests instead: transports reach the core only through the service layer.

fn sources(dir: &str) -> Vec<(String, String)> {
    let root = crate::helpers::project_root().join("src").join(dir);
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    assert!(!out.is_empty(), "no sources under src/{dir}");
    out
}

#[test]
fn transports_reach_the_core_only_through_the_service_layer() {
    for dir in ["http", "ws"] {
        for (file, text) in sources(dir) {
            for core in ["crate::log", "crate::group", "crate::store", "rocksdb"] {
                assert!(!text.contains(core), "{file} uses {core}: transports call crate::service");
            }
        }
    }
    for (file, text) in sources("ws") {
        assert!(!text.contains("crate::http"), "{file}: ws never imports http");
    }
    for dir in ["log", "group", "store", "service"] {
        for (file, text) in sources(dir) {
            assert!(!text.contains("axum"), "{file}: the core knows nothing of axum");
        }
    }
}
