//! The discovery catalog's API, the web UI's files, and the OpenAPI
//! document, which every response here is validated against.

#![allow(clippy::unwrap_used)] // Test code: a panic is a failure, and the JSON paths say which.

use serde_json::{Value, json};

use crate::on_both;
use crate::support::{ANALYST, ORDER_EVENTS, ORDERS, SALES, STEWARD, TestServer};

/// The OpenAPI document as served.
const OPENAPI: &str = include_str!("../../openapi.json");

/// Asserts that `body`, answered with `status` to `method` on the
/// documented `path` (a template such as `/api/v1/products/{domain}/{name}`),
/// is what the document says.
fn conforms(path: &str, method: &str, status: u16, body: &Value) {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    let operation = &doc["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not in openapi.json");
    let listed = &operation["responses"][status.to_string()];
    let response = if listed.is_object() { listed } else { &operation["responses"]["default"] };
    assert!(
        response.is_object() && (listed.is_object() || status >= 500),
        "{method} {path} answered {status}, which openapi.json does not list: {body}"
    );
    let response = match response["$ref"].as_str() {
        Some(r) => &doc["components"]["responses"][r.rsplit('/').next().unwrap_or_default()],
        None => response,
    };
    let schema = &response["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} {status} has no JSON schema in openapi.json");
    // The schema, resolved against the whole document (its $refs point into components).
    let mut root = doc.clone();
    root["$ref"] = json!("#/definitions/this");
    root["definitions"] = json!({ "this": schema });
    let validator = jsonschema::options().with_draft(jsonschema::Draft::Draft202012).build(&root).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} {path} {status} does not match openapi.json:\n{}\nbody: {body:#}", errors.join("\n"));
}

async fn get_ok(server: &TestServer, template: &str, path: &str, token: Option<&str>) -> Value {
    let (status, body) = server.get(path, token).await;
    assert_eq!(status, 200, "{path}: {body}");
    conforms(template, "get", status, &body);
    body
}

const PRODUCT: &str = "/api/v1/products/{domain}/{name}";

async fn catalog_api(server: &TestServer) {
    assert_eq!(server.publish(Some(SALES), ORDERS).await.0, 201);
    let next = ORDERS.replace("version: 1.2.0", "version: 1.3.0").replace(
        "      channel: { type: string, description: Where the order was placed }",
        "      channel: { type: string, description: Where the order was placed }\n      coupon: { type: string, description: The coupon used at checkout }",
    );
    let (status, body) = server.publish(Some(SALES), &next).await;
    assert_eq!(status, 201, "{body}");
    let (status, appended) = server.append(Some(SALES), "sales/orders", "application/x-ndjson", ORDER_EVENTS).await;
    assert_eq!(status, 201, "{appended}");
    let head = server.store.head("sales", "orders").await.expect("head");
    server.projected("sales/orders", head).await;

    // Search: ranked, with facets, and located errors.
    let found = get_ok(server, "/api/v1/search", "/api/v1/search?q=orders", None).await;
    assert_eq!(found["total"], 1);
    assert_eq!(found["results"][0]["name"], "orders");
    assert!(found["results"][0]["matched_in"].as_array().unwrap().contains(&json!("name")), "{found}");
    assert_eq!(found["facets"]["domain"], json!([{"value": "sales", "count": 1}]));
    let by_column = get_ok(server, "/api/v1/search", "/api/v1/search?q=customer_email", None).await;
    assert!(by_column["results"][0]["matched_in"].as_array().unwrap().contains(&json!("columns")), "{by_column}");
    let typing = get_ok(server, "/api/v1/search", "/api/v1/search?q=reven", None).await;
    assert_eq!(typing["total"], 1, "the last word matches as a prefix");
    let none = get_ok(server, "/api/v1/search", "/api/v1/search?q=orders&domain=hr", None).await;
    assert_eq!((none["total"].as_u64(), none["results"].as_array().map(Vec::len)), (Some(0), Some(0)));
    let tagged = get_ok(server, "/api/v1/search", "/api/v1/search?tag=revenue&status=active", None).await;
    assert_eq!(tagged["total"], 1);
    let by_path = get_ok(server, "/api/v1/search", "/api/v1/search?q=sales/orders", None).await;
    assert_eq!(by_path["total"], 1, "a product's path finds it");
    for bad in ["/api/v1/search?limit=0", "/api/v1/search?limit=abc", "/api/v1/search?colour=red", "/api/v1/search?status=actve"] {
        let (status, body) = server.get(bad, None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        conforms("/api/v1/search", "get", status, &body);
        assert!(body["message"].as_str().unwrap().contains("use ?q="), "{bad}: the error says how: {body}");
    }

    // The product page: masking as each viewer gets it.
    let path = "/api/v1/products/sales/orders";
    let masking = |page: &Value| {
        let tables = page["contract"]["tables"].as_array().unwrap();
        let orders = tables.iter().find(|t| t["name"] == "orders").unwrap();
        orders["columns"].as_array().unwrap().iter().find(|c| c["name"] == "customer_email").unwrap()["masking"].clone()
    };
    let as_analyst = get_ok(server, PRODUCT, path, Some(ANALYST)).await;
    assert_eq!(masking(&as_analyst), "partial");
    assert_eq!(as_analyst["contract"]["viewer"]["roles"], json!(["analyst"]));
    assert_eq!(masking(&get_ok(server, PRODUCT, path, Some(SALES)).await), "clear");
    let public = get_ok(server, PRODUCT, path, None).await;
    assert_eq!(masking(&public), "redact");
    assert_eq!(public["contract"]["version"], "1.3.0");
    assert_eq!(public["contract"]["freshness"]["target"], "15m");

    // Versions, newest first, and the changelog between two.
    let versions = get_ok(server, &format!("{PRODUCT}/versions"), &format!("{path}/versions"), None).await;
    let listed: Vec<&str> = versions["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(listed, ["1.3.0", "1.2.0"]);
    let changelog = get_ok(server, &format!("{PRODUCT}/changelog"), &format!("{path}/changelog?from=1.2.0&to=1.3.0"), None).await;
    assert_eq!(changelog["breaking"], false);
    assert!(changelog["changes"].as_array().unwrap().iter().any(|c| c["subject"].as_str().unwrap().contains("coupon")), "{changelog}");
    let (status, body) = server.get(&format!("{path}/changelog?from=0.9.0"), None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.get(&format!("{path}/changelog?from=1.3.0&to=1.2.0"), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("swap them"), "{body}");

    // Lineage: events into tables, tables into the derived table.
    let lineage = get_ok(server, &format!("{PRODUCT}/lineage"), &format!("{path}/lineage"), None).await;
    let edges: Vec<(String, String, String)> = lineage["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["from"].as_str().unwrap().into(), e["to"].as_str().unwrap().into(), e["label"].as_str().unwrap().into()))
        .collect();
    assert!(edges.contains(&("event:OrderPlaced".into(), "table:orders".into(), "set".into())), "{edges:?}");
    assert!(edges.contains(&("event:OrderErased".into(), "table:orders".into(), "delete".into())), "{edges:?}");
    assert!(edges.contains(&("table:orders".into(), "table:daily_revenue".into(), "sql".into())), "{edges:?}");
    let layer = |id: &str| lineage["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap()["layer"].as_u64().unwrap();
    assert_eq!((layer("event:OrderPlaced"), layer("table:orders"), layer("table:daily_revenue")), (0, 1, 2));

    // Freshness and quality.
    let fresh = get_ok(server, &format!("{PRODUCT}/freshness"), &format!("{path}/freshness"), None).await;
    assert_eq!(fresh["head_position"], head);
    assert_eq!(fresh["lag_events"], 0);
    assert_eq!(fresh["status"], "fresh");
    assert_eq!(fresh["service_level"]["seconds"], 900);
    let quality = get_ok(server, &format!("{PRODUCT}/quality"), &format!("{path}/quality"), None).await;
    let orders_checks = quality["tables"].as_array().unwrap().iter().find(|t| t["name"] == "orders").unwrap();
    assert!(!orders_checks["checks"].as_array().unwrap().is_empty(), "{quality}");

    // Sample rows, masked through the engine, and audited as the catalog's.
    let sample =
        |token| async move { get_ok(server, &format!("{PRODUCT}/sample"), &format!("{path}/sample?table=orders&limit=5"), token).await };
    let emails = |s: &Value| -> Vec<String> {
        let i = s["columns"].as_array().unwrap().iter().position(|c| c["name"] == "customer_email").unwrap();
        s["rows"].as_array().unwrap().iter().filter_map(|r| r[i].as_str().map(str::to_owned)).collect()
    };
    let masked = emails(&sample(Some(ANALYST)).await);
    assert!(!masked.is_empty() && masked.iter().all(|e| e.starts_with("***@")), "{masked:?}");
    let clear = emails(&sample(Some(SALES)).await);
    assert!(!clear.is_empty() && clear.iter().all(|e| !e.starts_with("***")), "{clear:?}");
    let redacted = emails(&sample(None).await);
    assert!(redacted.iter().all(|e| e == "***"), "{redacted:?}");
    let (status, body) = server.get(&format!("{path}/sample?table=nope"), None).await;
    assert_eq!(status, 404);
    assert!(body["message"].as_str().unwrap().contains("orders, order_lines, daily_revenue"), "{body}");
    conforms(&format!("{PRODUCT}/sample"), "get", status, &body);
    let (status, _) = server.get(&format!("{path}/sample?limit=1000"), None).await;
    assert_eq!(status, 400);
    let audit = server.get("/api/v1/audit?limit=100", Some(STEWARD)).await.1;
    assert!(audit["queries"].as_array().unwrap().iter().any(|q| q["via"] == "catalog" && q["principal"] == "analyst"), "{audit}");

    // Volume: every event was recorded today; each table has rows.
    let volume = get_ok(server, &format!("{PRODUCT}/volume"), &format!("{path}/volume?days=7"), None).await;
    let days = volume["events"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(days.iter().map(|d| d["events"].as_i64().unwrap()).sum::<i64>(), head);
    assert_eq!(days.last().unwrap()["events"], head, "today's column holds every event");
    assert!(days.iter().all(|d| d["by_type"].is_null()), "per-type counts are the domain's: {volume}");
    let as_member = get_ok(server, &format!("{PRODUCT}/volume"), &format!("{path}/volume?days=7"), Some(SALES)).await;
    let today = &as_member["events"].as_array().unwrap().last().unwrap()["by_type"];
    assert_eq!(today.as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum::<i64>(), head, "{today}");
    let orders_rows = volume["tables"]["orders"].as_array().unwrap();
    assert!(orders_rows.last().unwrap()["rows"].as_u64().unwrap() > 0, "{volume}");
    let (status, _) = server.get(&format!("{path}/volume?days=0"), None).await;
    assert_eq!(status, 400);

    // Who am I.
    let me = get_ok(server, "/api/v1/me", "/api/v1/me", Some(ANALYST)).await;
    assert_eq!((me["name"].as_str(), me["public"].as_bool()), (Some("analyst"), Some(false)));
    assert_eq!(get_ok(server, "/api/v1/me", "/api/v1/me", None).await["public"], true);

    // A product that does not exist.
    let (status, body) = server.get("/api/v1/products/sales/nope/lineage", None).await;
    assert_eq!(status, 404);
    conforms(&format!("{PRODUCT}/lineage"), "get", status, &body);
}

async fn search_follows_publications(server: &TestServer) {
    let before = get_ok(server, "/api/v1/search", "/api/v1/search?q=orders", None).await;
    assert_eq!(before["total"], 0);
    assert_eq!(server.publish(Some(SALES), ORDERS).await.0, 201);
    // Published through this server: the index is invalidated at once.
    let after = get_ok(server, "/api/v1/search", "/api/v1/search?q=orders", None).await;
    assert_eq!(after["total"], 1);
    // Published behind the server's back (another process): seen within the recheck interval.
    let sales = tessera_store::Principal { name: "x".into(), roles: vec![tessera_contract::Role::Owner], domains: vec!["sales".into()] };
    let other = ORDERS.replace("name: orders", "name: returns").replace("title: Orders", "title: Returns");
    server.store.publish(&sales, &other).await.expect("publish");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = get_ok(server, "/api/v1/search", "/api/v1/search?q=returns", None).await;
        if r["total"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a publication elsewhere is not found within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

on_both!(catalog_api, search_follows_publications);

#[tokio::test]
async fn the_ui_is_served_with_a_content_security_policy() {
    let server = TestServer::start(false).await.expect("server");
    let page = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("/ui/app.js") && html.contains("<main"), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "nothing is fetched from elsewhere");
    for (file, media) in [("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")] {
        let r = server.http.get(server.url(&format!("/ui/{file}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{file}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(media), "{file}");
    }
    let (status, body) = server.get("/ui/../../etc/passwd", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.get("/ui/app.jsx", None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let doc = server.http.get(server.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(doc.status(), 200);
    assert_eq!(doc.json::<Value>().await.unwrap(), serde_json::from_str::<Value>(OPENAPI).unwrap());
    server.finish().await;
}

/// Every route of the router is in the OpenAPI document with the same
/// methods, and the document lists no route the router lacks.
#[test]
fn openapi_lists_exactly_the_routes() {
    // Every module that routes: the top-level router and each resource's `router()`.
    let source = [
        include_str!("../../src/lib.rs"),
        include_str!("../../src/products.rs"),
        include_str!("../../src/events.rs"),
        include_str!("../../src/operations.rs"),
        include_str!("../../src/subjects.rs"),
        include_str!("../../src/discovery/mod.rs"),
        include_str!("../../src/sql.rs"),
        include_str!("../../src/ui.rs"),
    ]
    .join("\n");
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let mut routed = std::collections::BTreeSet::new();
    for line in source.split(".route(\"").skip(1) {
        let line = line.split(".route(").next().unwrap_or(line).lines().next().unwrap_or(line);
        let path = line.split('"').next().unwrap();
        let handlers = line.split_once(',').unwrap().1;
        let full = if path.starts_with("/api")
            || path == "/healthz"
            || path == "/readyz"
            || path == "/metrics"
            || path == "/"
            || path.starts_with("/ui/")
        {
            path.to_owned()
        } else {
            format!("/api/v1{path}")
        };
        for (call, method) in [("get(", "get"), ("post(", "post"), (".post(", "post")] {
            if handlers.contains(call) {
                routed.insert((full.clone(), method.to_owned()));
            }
        }
    }
    // The UI's files are not API.
    routed.retain(|(p, _)| p != "/" && !p.starts_with("/ui/"));
    let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (p.clone(), m.clone())))
        .collect();
    assert!(routed.len() > 20, "the router's routes were read: {routed:?}");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let phantom: Vec<_> = documented.difference(&routed).collect();
    assert!(undocumented.is_empty(), "routes missing from openapi.json: {undocumented:?}");
    assert!(phantom.is_empty(), "openapi.json lists routes the server does not have: {phantom:?}");
}
