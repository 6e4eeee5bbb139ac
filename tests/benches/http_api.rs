//! DescribeJob and DeleteJob over AWS IoT's HTTP API next to the same requests over the MQTT control API, on
//! one release `sprig`: requests per second, latency (p50, p99, max) and CPU per request (the gateway's,
//! and the clients' in this process) for each transport, operation and number of clients, each client
//! with one request in flight.
//!
//! HTTP: hyper's HTTP/1.1 client connection, one keep-alive connection per client and no pool (hyper's
//! pooled client would pick the connections itself), each request signed as botocore signs it: AWS
//! Signature Version 4 by `aws-sigv4`, service `iot`, `host` and `x-amz-date` signed, the payload hashed
//! from the body, with the local operator's access key as `sprig credentials` prints it. MQTT: the
//! harness's [`Operator`] (rumqttc, requests and replies at QoS 1, as the CLI sends them), one connection
//! per client. DescribeJob: one of a few existing jobs, over and over. DeleteJob (`force`): jobs of one
//! target each, created over MQTT before the clock starts, each deleted once; the gateway finishes removing
//! them before the next measurement starts. The operator's request rate, the per-connection publish quota
//! and the limit of concurrent deletions are raised so that none of them caps the figures.
//!
//! `cargo bench -p sprig-tests --bench http_api`; `SPRIG_HTTP_API_REQUESTS` (DescribeJobs per measurement,
//! 20,000), `SPRIG_HTTP_API_DELETES` (DeleteJobs per measurement, 3,000), `SPRIG_HTTP_API_CLIENTS` (the
//! concurrent measurements' clients, 4), `SPRIG_HTTP_API_ROUNDS` (3: each round measures everything
//! again, the transport measured first alternating; the table pools the rounds and gives the lowest and
//! highest round's rate). Figures are in the README's Benchmarks.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sprig_test_support::settings::env_or;
use sprig_tests::bench::{percentile, sprig_release_bin};
use sprig_tests::{api_addr, create_job, procfs, with_setting, Gateway, Operator};
use tokio::net::TcpStream;

/// The credential scope's region and service, as botocore's `iot` client signs with `region_name="local"`.
const REGION: &str = "local";
const SERVICE: &str = "iot";
/// Jobs that DescribeJob reads (client `i` reads the `i % DESCRIBED`th).
const DESCRIBED: usize = 4;
/// Requests each client sends, untimed, before each measurement: its connection and the gateway warm.
const WARM_UP: usize = 50;
/// Clients that create the jobs DeleteJob is timed on.
const CREATORS: usize = 4;
/// How long the gateway may take to finish removing the deleted jobs.
const DELETIONS_WITHIN: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Http,
    Mqtt,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Http => "HTTP",
            Transport::Mqtt => "MQTT",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    DescribeJob,
    DeleteJob,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::DescribeJob => "DescribeJob",
            Operation::DeleteJob => "DeleteJob",
        }
    }
}

/// An access key id and its secret.
struct AccessKey {
    id: String,
    secret: String,
}

impl AccessKey {
    /// The local operator's, as `sprig credentials` prints it for the AWS CLI.
    fn local(gateway: &Gateway) -> AccessKey {
        let out = gateway.cli(&["credentials"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "sprig credentials: {text}");
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name))
                .unwrap_or_else(|| panic!("sprig credentials printed no {name}: {text}"))
                .to_owned()
        };
        AccessKey {
            id: value("AWS_ACCESS_KEY_ID="),
            secret: value("AWS_SECRET_ACCESS_KEY="),
        }
    }
}

/// A client of the HTTP API on one keep-alive connection, signing its requests as botocore does.
struct HttpClient {
    sender: SendRequest<Empty<Bytes>>,
    /// `host` as sent and signed: the API's address.
    host: String,
    credentials: Credentials,
}

impl HttpClient {
    async fn connect(addr: SocketAddr, key: &AccessKey) -> HttpClient {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the HTTP API");
        // As urllib3, botocore's HTTP client, sets its sockets.
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        // The connection's I/O on a task of its own, as hyper has it: driven by the client's own task
        // instead (as the `Operator` drives its MQTT connection), the client measured more CPU per
        // request, not less.
        tokio::spawn(connection);
        HttpClient {
            sender,
            host: addr.to_string(),
            credentials: Credentials::new(&key.id, &key.secret, None, None, "bench"),
        }
    }

    /// Sends one request without a body, signed now, and reads the whole answer.
    async fn send(&mut self, method: &str, path_and_query: &str) -> (u16, Bytes) {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", &self.host);
        for (name, value) in self.signature(method, path_and_query) {
            request = request.header(name, value);
        }
        let request = request.body(Empty::new()).unwrap();
        self.sender.ready().await.expect("the connection is open");
        let response = self
            .sender
            .send_request(request)
            .await
            .expect("the gateway answered");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    /// The headers SigV4 adds (`authorization`, `x-amz-date`): `host` and `x-amz-date` signed, the
    /// payload's hash the (empty) body's, no `x-amz-content-sha256` (botocore sends none for `iot`).
    fn signature(&self, method: &str, path_and_query: &str) -> Vec<(String, String)> {
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let uri = format!("http://{}{path_and_query}", self.host);
        let headers = [("host", self.host.as_str())];
        let signable =
            SignableRequest::new(method, uri, headers.into_iter(), SignableBody::Bytes(b""))
                .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        instructions
            .headers()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }
}

/// One client of either transport.
enum Client {
    Http(Box<HttpClient>),
    Mqtt(Box<Operator>),
}

impl Client {
    async fn connect(
        transport: Transport,
        gateway: &Gateway,
        api: SocketAddr,
        key: &AccessKey,
    ) -> Client {
        match transport {
            Transport::Http => Client::Http(Box::new(HttpClient::connect(api, key).await)),
            Transport::Mqtt => Client::Mqtt(Box::new(gateway.operator().await)),
        }
    }

    /// Sends `operation` on `job_id` and waits for its answer, which must be a success (for DescribeJob:
    /// that job's description).
    async fn call(&mut self, operation: Operation, job_id: &str) {
        let answer = match self {
            Client::Http(http) => {
                let (method, path) = match operation {
                    Operation::DescribeJob => ("GET", format!("/jobs/{job_id}")),
                    Operation::DeleteJob => ("DELETE", format!("/jobs/{job_id}?force=true")),
                };
                let (status, body) = http.send(method, &path).await;
                let text = || String::from_utf8_lossy(&body).into_owned();
                assert_eq!(status, 200, "HTTP {method} {path}: {}", text());
                serde_json::from_slice::<Value>(&body).expect("a JSON body")
            }
            Client::Mqtt(operator) => {
                let body = match operation {
                    Operation::DescribeJob => json!({ "jobId": job_id }),
                    Operation::DeleteJob => json!({ "jobId": job_id, "force": true }),
                };
                let reply = operator.request(operation.name(), body).await;
                reply.unwrap_or_else(|e| panic!("MQTT {} {job_id}: {e:?}", operation.name()))
            }
        };
        if operation == Operation::DescribeJob {
            assert_eq!(answer["job"]["jobId"], job_id, "{answer}");
        }
    }
}

/// One measurement: how long its requests took, all together and each.
struct Measurement {
    elapsed: Duration,
    latencies_us: Vec<f64>,
    /// CPU time meanwhile, in clock ticks: the gateway's, and this process's (the clients').
    gateway_ticks: u64,
    client_ticks: u64,
}

/// Each client sends `operation` on its own list of jobs, one at a time, all clients at once; the
/// clients are handed back, their connections open.
async fn measure(
    clients: Vec<Client>,
    operation: Operation,
    work: Vec<Vec<String>>,
    pid: u32,
) -> (Measurement, Vec<Client>) {
    let (gateway_before, client_before) = (cpu_ticks(pid), cpu_ticks(std::process::id()));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(work)
        .map(|(mut client, jobs)| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(jobs.len());
                for job_id in &jobs {
                    let sent = Instant::now();
                    client.call(operation, job_id).await;
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                }
                (client, latencies)
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    let mut latencies_us = Vec::new();
    for task in tasks {
        let (client, latencies) = task.await.unwrap();
        clients.push(client);
        latencies_us.extend(latencies);
    }
    let measurement = Measurement {
        elapsed: started.elapsed(),
        latencies_us,
        gateway_ticks: cpu_ticks(pid) - gateway_before,
        client_ticks: cpu_ticks(std::process::id()) - client_before,
    };
    (measurement, clients)
}

fn cpu_ticks(pid: u32) -> u64 {
    procfs::stat(pid).expect("the process runs").cpu_ticks
}

/// `items` dealt out to `clients` in turn.
fn share<T: Clone>(items: &[T], clients: usize) -> Vec<Vec<T>> {
    (0..clients)
        .map(|c| items.iter().skip(c).step_by(clients).cloned().collect())
        .collect()
}

/// Creates `ids` as jobs of one target each (a thing of its own), [`CREATORS`] at a time.
async fn create_jobs(gateway: &Gateway, ids: &[String]) {
    let mut creating = Vec::new();
    for ids in share(ids, CREATORS) {
        let mut operator = gateway.operator().await;
        creating.push(tokio::spawn(async move {
            for id in &ids {
                let thing = format!("thing-of-{id}");
                let reply = operator
                    .request("CreateJob", create_job(id, None, &[&thing]))
                    .await;
                reply.unwrap_or_else(|e| panic!("CreateJob {id}: {e:?}"));
            }
        }));
    }
    for task in creating {
        task.await.unwrap();
    }
}

/// Waits until no job is in DELETION_IN_PROGRESS: the gateway has finished what DeleteJob started.
async fn wait_for_deletions(operator: &mut Operator) {
    let deadline = Instant::now() + DELETIONS_WITHIN;
    loop {
        let listed = operator
            .request(
                "ListJobs",
                json!({ "status": "DELETION_IN_PROGRESS", "maxResults": 1 }),
            )
            .await
            .expect("ListJobs");
        if listed["jobs"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "deletions still in progress after {DELETIONS_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one row of the table pools: every round's measurement of one transport, operation and number of
/// clients.
struct Row {
    operation: Operation,
    transport: Transport,
    clients: usize,
    rounds: Vec<Measurement>,
}

impl Row {
    fn print(&self, ticks_per_second: f64) {
        let requests: usize = self.rounds.iter().map(|m| m.latencies_us.len()).sum();
        let elapsed: f64 = self.rounds.iter().map(|m| m.elapsed.as_secs_f64()).sum();
        let per_request = |ticks: fn(&Measurement) -> u64| {
            let ticks: u64 = self.rounds.iter().map(ticks).sum();
            ticks as f64 / ticks_per_second * 1e6 / requests as f64
        };
        let mut latencies: Vec<f64> = self
            .rounds
            .iter()
            .flat_map(|m| m.latencies_us.iter().copied())
            .collect();
        latencies.sort_by(f64::total_cmp);
        let at = |p: f64| percentile(&latencies, p).unwrap_or(0.0);
        let rates: Vec<f64> = self
            .rounds
            .iter()
            .map(|m| m.latencies_us.len() as f64 / m.elapsed.as_secs_f64())
            .collect();
        let lowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = rates.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<11}  {:<9}  {:>7}  {:>8}  {:>7.0}  {:>13}  {:>6.0}  {:>6.0}  {:>7.0}  {:>11.0}  {:>10.0}",
            self.operation.name(),
            self.transport.name(),
            self.clients,
            requests,
            requests as f64 / elapsed,
            format!("{lowest:.0}–{highest:.0}"),
            at(0.5),
            at(0.99),
            at(1.0),
            per_request(|m| m.gateway_ticks),
            per_request(|m| m.client_ticks),
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let describes = env_or("SPRIG_HTTP_API_REQUESTS", 20_000);
    let deletes = env_or("SPRIG_HTTP_API_DELETES", 3000);
    let concurrent = env_or("SPRIG_HTTP_API_CLIENTS", 4).max(2);
    let rounds = env_or("SPRIG_HTTP_API_ROUNDS", 3).max(1);
    let gateway = Gateway::start_bin_with(&sprig_release_bin(), |config| {
        let config = with_setting(
            &config,
            "requests_per_second = 50",
            "requests_per_second = 1000000",
        );
        let config = with_setting(&config, "request_burst = 100", "request_burst = 1000000");
        let config = with_setting(
            &config,
            "max_publishes_per_second = 100",
            "max_publishes_per_second = 0",
        );
        with_setting(
            &config,
            "max_concurrent_deletions = 10",
            "max_concurrent_deletions = 1000000",
        )
    });
    let config = std::fs::read_to_string(&gateway.config_path).unwrap();
    let api = api_addr(&config).expect("the config has an HTTP API listener");
    let key = AccessKey::local(&gateway);
    let pid = gateway.pid();
    let mut admin = gateway.operator().await;

    let described: Vec<String> = (0..DESCRIBED).map(|i| format!("described-{i}")).collect();
    create_jobs(&gateway, &described).await;

    let mut rows = Vec::new();
    for operation in [Operation::DescribeJob, Operation::DeleteJob] {
        for clients in [1, concurrent] {
            for transport in [Transport::Http, Transport::Mqtt] {
                rows.push(Row {
                    operation,
                    transport,
                    clients,
                    rounds: Vec::new(),
                });
            }
        }
    }
    for round in 0..rounds {
        // Pairs of rows, one per transport: the transport measured first alternates from round to round.
        for pair in rows.chunks_mut(2) {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for index in order {
                let row = &mut pair[index];
                let work = match row.operation {
                    Operation::DescribeJob => (0..row.clients)
                        .map(|c| vec![described[c % DESCRIBED].clone(); describes / row.clients])
                        .collect(),
                    Operation::DeleteJob => {
                        let transport = row.transport.name();
                        let ids: Vec<String> = (0..deletes)
                            .map(|i| format!("deleted-{round}-{transport}-{}-{i}", row.clients))
                            .collect();
                        create_jobs(&gateway, &ids).await;
                        share(&ids, row.clients)
                    }
                };
                let mut clients = Vec::with_capacity(row.clients);
                for _ in 0..row.clients {
                    clients.push(Client::connect(row.transport, &gateway, api, &key).await);
                }
                let warm_up = (0..row.clients)
                    .map(|c| vec![described[c % DESCRIBED].clone(); WARM_UP])
                    .collect();
                let (_, clients) = measure(clients, Operation::DescribeJob, warm_up, pid).await;
                let (measurement, _) = measure(clients, row.operation, work, pid).await;
                row.rounds.push(measurement);
                wait_for_deletions(&mut admin).await;
            }
        }
    }

    println!(
        "HTTP API (keep-alive HTTP/1.1, SigV4) and MQTT control API (QoS 1), release sprig, {rounds} round(s); \
         one request in flight per client; latencies and CPU per request in µs"
    );
    println!(
        "{:<11}  {:<9}  {:>7}  {:>8}  {:>7}  {:>13}  {:>6}  {:>6}  {:>7}  {:>11}  {:>10}",
        "operation",
        "transport",
        "clients",
        "requests",
        "req/s",
        "req/s rounds",
        "p50",
        "p99",
        "max",
        "gateway CPU",
        "client CPU"
    );
    let ticks_per_second = procfs::ticks_per_second() as f64;
    for row in &rows {
        row.print(ticks_per_second);
    }
    for needle in ["WARN", "ERROR"] {
        for line in gateway.log_lines(needle).iter().take(20) {
            println!("{line}");
        }
    }
}
