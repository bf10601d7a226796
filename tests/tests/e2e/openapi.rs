//! `GET /openapi.json` (SPEC §4): the OpenAPI 3.1 document the master serves describes
//! every route it answers, with the statuses, error shape and token it really uses.

use std::collections::{BTreeMap, BTreeSet};

use cluster_tests::Cluster;
use serde_json::{Value, json};

/// Every route of SPEC §4 with its methods.
const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["get"]),
    ("/activity", &["get"]),
    ("/get-tasks", &["get"]),
    ("/healthz", &["get"]),
    ("/masters", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
    ("/results", &["post"]),
    ("/slaves", &["get", "post"]),
    ("/slaves/{id}", &["delete"]),
    ("/slaves/{id}/heartbeat", &["post"]),
    ("/tasks", &["get", "post"]),
    ("/tasks/{id}", &["delete", "get"]),
    ("/tasks/{id}/events", &["get"]),
    ("/tasks/{id}/result", &["post"]),
];

/// Routes that need the cluster token when the master has one (SPEC §8).
const PROTECTED: &[(&str, &str)] = &[
    ("/results", "post"),
    ("/slaves", "post"),
    ("/slaves/{id}", "delete"),
    ("/slaves/{id}/heartbeat", "post"),
    ("/tasks/{id}", "delete"),
    ("/tasks/{id}/result", "post"),
];

const HTTP_METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

async fn document(cluster: &Cluster) -> Value {
    let reply = cluster.http.get(&cluster.url("/openapi.json")).await;
    assert_eq!(reply.status, 200);
    let content_type = reply.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    reply.body
}

/// The schema a `$ref` points at (`#/components/schemas/Name`).
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.strip_prefix("#/components/schemas/").expect("a local schema ref");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let schema =
        &doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} documents a JSON {status}");
    resolve(doc, schema)
}

fn property_names(schema: &Value) -> BTreeSet<&str> {
    schema["properties"].as_object().expect("an object schema").keys().map(String::as_str).collect()
}

#[tokio::test]
async fn openapi_json_is_openapi_3_1_and_lists_every_route_with_its_methods() {
    let cluster = Cluster::start(&[1]).await;
    let doc = document(&cluster).await;

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi is {version:?}");
    let listed: BTreeMap<&str, BTreeSet<&str>> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = HTTP_METHODS.iter().copied().filter(|method| item.get(*method).is_some()).collect();
            (path.as_str(), methods)
        })
        .collect();
    let expected: BTreeMap<&str, BTreeSet<&str>> =
        ROUTES.iter().map(|(path, methods)| (*path, methods.iter().copied().collect())).collect();
    assert_eq!(listed, expected);

    let show = &doc["paths"]["/tasks/{id}"]["get"]["parameters"];
    let names: Vec<&str> =
        show.as_array().unwrap().iter().filter_map(|param| param["name"].as_str()).collect();
    assert_eq!(names, ["id", "wait"], "GET /tasks/{{id}} takes the id and ?wait=");
}

#[tokio::test]
async fn the_document_gives_the_token_statuses_and_error_shape_the_master_uses() {
    let cluster = Cluster::start(&[1]).await;
    let doc = document(&cluster).await;

    assert_eq!(doc["components"]["securitySchemes"]["cluster_token"]["scheme"], "bearer");
    for (path, method) in PROTECTED {
        let operation = &doc["paths"][path][method];
        assert_eq!(operation["security"], json!([{"cluster_token": []}]), "{method} {path}");
        assert!(operation["responses"]["401"].is_object(), "{method} {path} documents 401");
    }
    assert!(doc["paths"]["/tasks"]["post"]["security"].is_null(), "anyone may submit");

    let submit = &doc["paths"]["/tasks"]["post"]["responses"];
    for status in ["201", "202", "400", "413", "503"] {
        assert!(submit[status].is_object(), "POST /tasks documents {status}");
    }
    assert!(submit["503"]["headers"]["Retry-After"].is_object(), "503 carries Retry-After");
    let result = &doc["paths"]["/tasks/{id}/result"]["post"]["responses"];
    for status in ["200", "403", "404", "409"] {
        assert!(result[status].is_object(), "POST /tasks/{{id}}/result documents {status}");
    }

    let error = response_schema(&doc, "/tasks/{id}", "get", 404);
    assert_eq!(property_names(error), BTreeSet::from(["error", "message"]));
    let codes = &resolve(&doc, &error["properties"]["error"])["enum"];
    for code in
        ["invalid_request", "invalid_expression", "unauthorized", "not_found", "full_capacity", "no_slaves"]
    {
        assert!(codes.as_array().unwrap().contains(&json!(code)), "error codes list {code}");
    }
}

#[tokio::test]
async fn documented_bodies_have_the_fields_the_master_answers_with() {
    let cluster = Cluster::start(&[1]).await;
    let doc = document(&cluster).await;

    let assigned = cluster.submit("1+1", 0).await;
    assert_eq!(assigned.status, 201);
    let keys = |body: &Value| body.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    let documented = |schema: &Value| property_names(schema).into_iter().map(str::to_owned).collect();
    assert_eq!(keys(&assigned.body), documented(response_schema(&doc, "/tasks", "post", 201)));

    let missing = cluster.http.get(&cluster.url("/tasks/999999")).await;
    assert_eq!(missing.status_and_code(), (404, "not_found"));
    assert_eq!(keys(&missing.body), documented(response_schema(&doc, "/tasks/{id}", "get", 404)));

    let slaves = cluster.http.get(&cluster.url("/slaves")).await;
    let view = resolve(&doc, &response_schema(&doc, "/slaves", "get", 200)["properties"]["slaves"]["items"]);
    assert_eq!(keys(&slaves.body["slaves"][0]), documented(view));

    let health = cluster.http.get(&cluster.url("/healthz")).await;
    assert_eq!(keys(&health.body), documented(response_schema(&doc, "/healthz", "get", 200)));
}
