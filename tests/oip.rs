//! The official Open Inference Protocol clients (`tritonclient`, the `kserve`
//! SDK) through stagegate to real KServe model servers: every call answers as
//! it does against the server, server-level calls are the gateway's own, and
//! shadow testing compares their default encodings (JSON and binary tensors)
//! as tensors.
//!
//! Two model servers are shared by the tests: production (version 1) and
//! staging (version 2), each serving `adder` and `drift`. Staging's `adder`
//! is a close candidate (within the comparison's tolerance); its `drift` is off
//! by 0.5.

mod common;
#[path = "common/oip_server.rs"]
mod oip_server;

use std::sync::OnceLock;

use http::Method;
use oip_server::{Clients, ModelServer, run_clients};
use serde_json::Value;

const REQUESTS: usize = 4;

struct Servers {
    production: ModelServer,
    staging: ModelServer,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let staging =
            std::thread::spawn(|| ModelServer::start("2", &["adder=0.0001", "drift=0.5"]));
        let production = ModelServer::start("1", &["adder=0", "drift=0"]);
        Servers {
            production,
            staging: staging.join().expect("the staging server starts"),
        }
    })
}

/// `adder` and `drift`: version 0 archived, 1 in production, 2 in staging and
/// shadowed, each with its HTTP and gRPC endpoints; `http-only`: a production
/// version without gRPC endpoints.
fn config(servers: &Servers) -> String {
    let (production, staging) = (&servers.production, &servers.staging);
    let version = |id: &str, stage: &str, server: &ModelServer| {
        format!(
            "[[models.versions]]\nversion = \"{id}\"\nstage = \"{stage}\"\nendpoints = [\"{}\"]\n\
             grpc_endpoints = [\"{}\"]\n",
            server.url(),
            server.grpc_url()
        )
    };
    let mut text = String::from("[server]\n");
    for model in ["adder", "drift"] {
        text.push_str(&format!("[[models]]\nname = \"{model}\"\n"));
        text.push_str(&version("0", "archived", production));
        text.push_str(&version("1", "production", production));
        text.push_str(&version("2", "staging", staging));
        text.push_str("[models.shadow]\npercent = 100.0\n[models.compare]\nmode = \"oip\"\n");
    }
    text.push_str(&format!(
        "[[models]]\nname = \"http-only\"\n[[models.versions]]\nversion = \"1\"\n\
         stage = \"production\"\nendpoints = [\"{}\"]\n",
        production.url()
    ));
    text
}

/// Runs `kind` against the gateway and the production server (its HTTP or
/// gRPC listener) for `model`.
async fn clients(
    kind: Clients,
    gateway: &common::TestGateway,
    servers: &'static Servers,
    model: &str,
) -> Value {
    let (gateway, model) = (gateway.data_addr(), model.to_string());
    let direct = &servers.production;
    tokio::task::spawn_blocking(move || run_clients(kind, gateway, direct, &model, REQUESTS))
        .await
        .expect("the clients ran")
}

/// After `mirrored` mirrors of each: the close candidate (`adder`) agrees
/// fully, the drifting one (`drift`) not at all, and nothing was lost.
async fn assert_close_agrees_and_drift_does_not(gateway: &common::TestGateway, mirrored: u64) {
    let settled = |report: &Value| report["compared"].as_u64() == Some(mirrored);
    let close = wait_for_report(gateway, "adder", settled).await;
    assert_eq!(close["agreement"]["agreement"], 1.0, "{close}");
    assert_eq!(
        close["mirrored"], mirrored,
        "readiness and metadata calls are not mirrored"
    );
    assert_eq!(close["dropped"]["primary_incomplete"], 0, "{close}");
    let drifting = wait_for_report(gateway, "drift", settled).await;
    assert_eq!(drifting["agreement"]["agreement"], 0.0, "{drifting}");
}

async fn shadow_report(gateway: &common::TestGateway, model: &str) -> Value {
    let path = format!("/api/v1/models/{model}/shadow");
    let answer = common::admin(gateway, Method::GET, &path, None).await;
    answer.json()["versions"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_clients_get_through_the_gateway_what_they_get_from_the_server() {
    let servers = servers();
    let gateway = common::gateway(&config(servers)).await;
    let report = clients(Clients::Http, &gateway, servers, "adder").await;
    for client in ["tritonclient", "kserve", "kserve_grpc"] {
        let (through, direct) = (&report["gateway"][client], &report["direct"][client]);
        for (check, got) in through.as_object().unwrap() {
            if check == "server_metadata" {
                continue;
            }
            assert_eq!(got, &direct[check], "{client} {check}");
        }
        assert_eq!(through["server_live"], true, "{client}");
        assert_eq!(through["server_ready"], true, "{client}");
    }
    let triton = &report["gateway"]["tritonclient"];
    assert_eq!(
        triton["model_ready"],
        Value::Array(vec![Value::Bool(true); REQUESTS])
    );
    assert_eq!(triton["infer_binary"].as_array().unwrap().len(), REQUESTS);
    assert_eq!(triton["model_metadata"]["name"], "adder");
    // The server-level metadata is the gateway's own.
    assert_eq!(triton["server_metadata"]["name"], "stagegate");
    assert!(
        triton["server_metadata"]["extensions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("binary_tensor_data"))
    );
    let models = common::send(
        &common::client(),
        Method::GET,
        &format!("http://{}/v1/models", gateway.data_addr()),
        &[],
        "",
    )
    .await;
    assert_eq!(
        models.json()["models"],
        serde_json::json!(["adder", "drift", "http-only"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_over_grpc_gets_through_the_gateway_what_it_gets_from_the_server_and_is_shadowed()
 {
    let servers = servers();
    let gateway = common::gateway(&config(servers)).await;
    let report = clients(Clients::Grpc, &gateway, servers, "adder").await;
    let (via, server) = (&report["gateway"], &report["direct"]);
    for (check, got) in via.as_object().unwrap() {
        if check != "server_metadata" {
            assert_eq!(got, &server[check], "{check}");
        }
    }
    assert_eq!(via["server_live"], true);
    assert_eq!(via["server_ready"], true);
    assert_eq!(via["server_metadata"]["name"], "stagegate");
    assert_eq!(via["infer"].as_array().unwrap().len(), REQUESTS);
    assert_eq!(
        via["infer_gzip"], via["infer"],
        "gzip-compressed calls are routed"
    );
    let refusals = &report["refusals"];
    let status = |name: &str| refusals[name].as_str().unwrap().to_string();
    assert!(
        status("unknown_model").starts_with("StatusCode.NOT_FOUND"),
        "{refusals}"
    );
    assert!(
        status("archived_pin").starts_with("StatusCode.PERMISSION_DENIED"),
        "{refusals}"
    );
    assert!(
        status("no_grpc_endpoints").starts_with("StatusCode.UNAVAILABLE"),
        "{refusals}"
    );
    assert!(
        status("no_grpc_endpoints").contains("grpc_endpoints"),
        "{refusals}"
    );
    // model_version pins the staging version, as the HTTP path's pin does.
    let staged = &refusals["pinned_staging"][0];
    assert!(
        (staged[0].as_f64().unwrap() - 1.5001).abs() < 1e-6,
        "{staged}"
    );
    // So does the pin header, sent as metadata.
    assert_eq!(refusals["stage_pin_header"], refusals["pinned_staging"]);
    // A caller's deadline (grpc-timeout) is honoured, not refused.
    assert_eq!(refusals["with_client_timeout"], via["infer"][0]);

    // Unary inference calls that production answered (plain, gzip, and the one
    // with a deadline) were mirrored and compared as tensors: the close
    // candidate agrees, the drifting one does not.
    clients(Clients::Grpc, &gateway, servers, "drift").await;
    assert_close_agrees_and_drift_does_not(&gateway, 2 * REQUESTS as u64 + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_comparison_agrees_for_a_close_candidate_in_every_encoding_and_not_for_a_drifting_one()
 {
    let servers = servers();
    let gateway = common::gateway(&config(servers)).await;
    clients(Clients::Http, &gateway, servers, "adder").await;
    clients(Clients::Http, &gateway, servers, "drift").await;
    // tritonclient's JSON and binary inferences and the kserve SDK's over REST
    // and gRPC.
    assert_close_agrees_and_drift_does_not(&gateway, 4 * REQUESTS as u64).await;
}

/// The model's shadow report once `done` holds for it (the comparison thread
/// works on its own time).
async fn wait_for_report(
    gateway: &common::TestGateway,
    model: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let wait = async {
        loop {
            let report = shadow_report(gateway, model).await;
            if done(&report) {
                return report;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), wait).await {
        Ok(report) => report,
        Err(_) => panic!(
            "the report of {model} never settled: {}",
            shadow_report(gateway, model).await
        ),
    }
}
