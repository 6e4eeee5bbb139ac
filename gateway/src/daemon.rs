//! `sprig run`: wires the store, the jobs engine, the deletion worker, the broker and the control API
//! together (turning the configuration into the plain limits and routes the engine takes), and takes them down in order on SIGINT or SIGTERM.
//!
//! Start-up order matters: the store opens first (a second gateway on the same data dir fails here, on
//! sled's lock), unfinished deletions are queued before any listener accepts a client, and the broker binds
//! every listener before the gateway reports itself ready. Shutdown runs the other way: the engine stops
//! taking requests (they get ServiceUnavailableException), the deletion worker lets its batch commit,
//! clients are disconnected, and the store is flushed last.
//!
//! A store that cannot continue (it failed a write and cannot be reopened: see [`crate::store::Health`])
//! shuts the gateway down the same way, and `sprig run` exits non-zero so that systemd restarts it.
//!
//! The daemon is where the config meets the modules: [`config_checks`] runs the checks on it that need
//! `auth` and `broker::tls`, and `run` hands each module the settings it takes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::auth::{Authenticator, LocalOperator};
use crate::broker::Broker;
use crate::config::Config;
use crate::config::{JobsConfig, RecoveryRoute};
use crate::jobs::routes::{Route, Routes};
use crate::jobs::{deletion, device};
use crate::jobs::{Engine, Limits};
use crate::store::{self, Health, Store, StoreError};
use crate::{auth, control, device_api, http_api, notify, recovery, uplink};

pub mod config_checks;
mod exporter;
mod service_manager;

/// The store lives in this directory under the data dir.
const STORE_DIR: &str = "store";

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // The uptime DescribeGateway reports counts from here.
    let about = Arc::new(control::describe::About::starting_now(
        &config.gateway.id,
        config.uplink.is_some(),
    ));
    let data_dir = config.gateway.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let local_operator = LocalOperator::load_or_create(&data_dir).with_context(|| {
        format!(
            "cannot read or create {}",
            LocalOperator::path_in(&data_dir).display()
        )
    })?;
    let auth = Arc::new(
        Authenticator::new(&config.auth, &local_operator)
            .context("cannot set up authentication")?,
    );

    let store_path = data_dir.join(STORE_DIR);
    let cache_bytes = config.jobs.store_cache_mb << 20;
    let opening = store_path.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&opening, cache_bytes))
        .await?
        .map_err(|e| open_failed(&store_path, e))?;
    let store = Arc::new(store);
    let store_health = store.health();

    let (shutdown_tx, shutdown) = watch::channel(false);
    let (deletions_tx, deletions_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    // Plugins load before anything accepts work: a configured handler that cannot load refuses the start
    // (one that refuses its config leaves its route out of service, reported: `Handlers::load`).
    let handlers = Arc::new(recovery::Handlers::load(&config.recovery, &config.origin).await?);
    let routes = Arc::new(recovery_routes(&config.recovery));
    let (recoveries_tx, recoveries_rx) = mpsc::unbounded_channel();
    // The uplink's settings and TLS files are read before anything starts: a bad one refuses the start.
    let uplink = match &config.uplink {
        Some(uplink) => {
            let settings = uplink_settings(&config.gateway.id, &data_dir, uplink)?;
            let options = uplink::link_options(&settings)?;
            Some((settings, options, mpsc::unbounded_channel()))
        }
        None => None,
    };
    let mut engine = Engine::new(
        store.clone(),
        engine_limits(&config.jobs),
        &config.gateway.id,
        deletions_tx,
        events_tx,
    )
    .with_recovery_routes(routes.clone(), recoveries_tx)
    .with_creation_batch_size(config.jobs.creation_batch_size)
    .with_device_writes(
        Duration::from_millis(config.jobs.device_write_window_ms),
        device_api::WORKERS,
    );
    if let Some((_, _, (changes, _))) = &uplink {
        engine = engine.with_status_changes(changes.clone());
    }
    let engine = Arc::new(engine);
    engine.undo_unfinished_creations().await?;
    engine.count().await?;
    tokio::spawn(engine.clone().keep_count(shutdown.clone()));
    let deleter = tokio::spawn(deletion::run(
        engine.clone(),
        config.jobs.deletion_batch_size,
        deletions_rx,
        shutdown.clone(),
    ));
    let resumed = engine.resume_deletions().await?;
    tokio::spawn(device::run_step_timeouts(engine.clone(), shutdown.clone()));

    let broker = Broker::start_persistent(&config.broker, auth.clone(), store.sessions()).await?;
    let notifier = tokio::spawn(notify::run(
        broker.clone(),
        engine.clone(),
        events_rx,
        shutdown.clone(),
    ));
    // Each service tells when it takes its requests: "ready" is said after that, so a client that
    // connects on it is never early for them.
    let (devices_subscribed, devices_ready) = tokio::sync::oneshot::channel();
    let devices = tokio::spawn(device_api::serve(
        broker.clone(),
        engine.clone(),
        shutdown.clone(),
        devices_subscribed,
    ));
    let (recoveries_subscribed, recoveries_ready) = tokio::sync::oneshot::channel();
    let recoveries = tokio::spawn(recovery::runner::run(
        broker.clone(),
        engine.clone(),
        routes,
        handlers.clone(),
        recoveries_rx,
        shutdown.clone(),
        recoveries_subscribed,
    ));
    let (control_subscribed, control_ready) = tokio::sync::oneshot::channel();
    let control = {
        let (broker, engine, jobs) = (broker.clone(), engine.clone(), config.jobs.clone());
        let (handlers, shutdown, about) = (handlers.clone(), shutdown.clone(), about.clone());
        tokio::spawn(async move {
            let services = control::Services {
                engine,
                handlers,
                about,
            };
            control::serve(broker, services, &jobs, shutdown, control_subscribed).await
        })
    };
    // Before clients are let in: the uplink's `out` topics are copied to its spool from the first one.
    let uplink = match uplink {
        Some((settings, options, (_, changes))) => {
            let services = control::Services {
                engine: engine.clone(),
                handlers: handlers.clone(),
                about: about.clone(),
            };
            let requests = control::Requests::new(services, &config.jobs, "uplink");
            let started = uplink::start(
                settings,
                options,
                requests,
                changes,
                &broker,
                shutdown.clone(),
            );
            Some(started.await?)
        }
        None => None,
    };
    // AWS IoT's HTTP API: its listeners bound now (a port in use refuses the start), served from here on
    // (a request needs no broker service).
    let api = {
        let services = control::Services {
            engine: engine.clone(),
            handlers: handlers.clone(),
            about,
        };
        let requests = Arc::new(control::Requests::new(services, &config.jobs, "http"));
        let authenticate = http_api::sigv4_authenticator(auth.clone());
        http_api::Api::bind(&config.api, requests, authenticate).await?
    };
    let api_addrs: Vec<String> = (api.local_addrs().into_iter().map(|a| format!("http://{a}")))
        .chain(
            api.tls_local_addrs()
                .into_iter()
                .map(|a| format!("https://{a}")),
        )
        .collect();
    let api = tokio::spawn(api.serve(shutdown.clone()));
    let metrics_listeners = exporter::bind(&config.metrics.listen).await?;
    let metrics_addrs: Vec<String> = metrics_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| format!("http://{a}/metrics"))
        .collect();
    tokio::spawn(exporter::serve(
        metrics_listeners,
        store.health(),
        shutdown.clone(),
    ));
    // A service that failed to subscribe drops its sender; its task's error is reported at the end.
    let _ = tokio::join!(devices_ready, recoveries_ready, control_ready);
    let plain = broker
        .local_addrs()
        .into_iter()
        .map(|a| format!("mqtt://{a}"));
    let tls = broker
        .tls_local_addrs()
        .into_iter()
        .map(|a| format!("mqtts://{a}"));
    let addrs: Vec<String> = plain.chain(tls).collect();
    tracing::info!(
        listen = %addrs.join(", "),
        api = %api_addrs.join(", "),
        metrics = %metrics_addrs.join(", "),
        data_dir = %config.gateway.data_dir.display(),
        resumed_deletions = resumed,
        "sprig {} ready",
        env!("CARGO_PKG_VERSION")
    );
    // Clients are let in only now (a request sent earlier would find no service to answer it), and after
    // the line that says so: a client's CONNACK never comes before the log's "ready".
    broker.accept_clients();
    service_manager::ready();
    tokio::spawn(service_manager::watchdog(store.clone(), shutdown.clone()));

    let mut store_lost = None;
    let reason = tokio::select! {
        signal = wait_for_signal() => signal?,
        cause = store_fatal(store_health) => {
            store_lost = Some(cause);
            "the jobs store cannot continue"
        }
        outcome = control => service_ended("control API", outcome)?,
        outcome = devices => service_ended("device API", outcome)?,
        outcome = notifier => service_ended("notifier", outcome)?,
        outcome = recoveries => service_ended("recovery runner", outcome)?,
    };
    tracing::info!(reason, "shutting down");
    // Requests that arrive until the clients are disconnected are still answered, with
    // ServiceUnavailableException, rather than met with silence.
    engine.close();
    broker.shutdown().await;
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), deleter)
        .await
        .is_err()
    {
        tracing::warn!("the deletion worker did not stop within 5 s; its unfinished work resumes at the next start");
    }
    // Requests in progress are answered (the engine refuses new work once closed) within 2 s.
    let _ = tokio::time::timeout(Duration::from_secs(3), api).await;
    if let Some(uplink) = uplink {
        // It says offline to the fleet broker, if it is there, within its own 2 s.
        let _ = tokio::time::timeout(Duration::from_secs(3), uplink).await;
    }
    let store_path = data_dir.join(STORE_DIR);
    let closed = tokio::task::spawn_blocking(move || store.close()).await?;
    if let Some(cause) = store_lost {
        anyhow::bail!(
            "the jobs store in {} cannot continue ({cause}); sprig stops so that its service manager \
             restarts it",
            store_path.display()
        );
    }
    closed.with_context(|| {
        format!(
            "cannot flush the jobs store in {} at shutdown; operator requests were flushed before they \
             were answered, so none of them is lost; give its file system room and start sprig again",
            store_path.display()
        )
    })?;
    tracing::info!("store flushed; bye");
    Ok(())
}

/// The engine's deletion limits, as the configuration sets them.
pub fn engine_limits(jobs: &JobsConfig) -> Limits {
    Limits {
        max_concurrent_deletions: jobs.max_concurrent_deletions,
        per_namespace: jobs
            .namespaces
            .iter()
            .filter_map(|(ns, l)| l.max_concurrent_deletions.map(|n| (ns.clone(), n)))
            .collect(),
    }
}

/// The uplink's settings from `[uplink]`: the defaults that follow the gateway's id filled in, the fleet's
/// operator grants, the spool under `data_dir`.
pub fn uplink_settings(
    gateway_id: &str,
    data_dir: &std::path::Path,
    config: &crate::config::UplinkConfig,
) -> anyhow::Result<uplink::Settings> {
    let url = config
        .parsed_url()
        .map_err(|reason| anyhow::anyhow!("uplink.url: {reason}"))?;
    Ok(uplink::Settings {
        url,
        client_id: config.client_id_or(gateway_id),
        username: config.username.clone(),
        password: config.password.clone(),
        ca_file: config.ca_file.clone(),
        cert_file: config.cert_file.clone(),
        key_file: config.key_file.clone(),
        alpn: config.alpn.clone(),
        prefix: config.prefix_or(gateway_id),
        operator: Arc::new(auth::Operator {
            username: UPLINK_OPERATOR.to_owned(),
            grants: auth::grants(&config.namespaces, config.standard_jobs),
        }),
        reconnect_max: Duration::from_secs(config.reconnect_max_s),
        keep_alive: Duration::from_secs(config.keep_alive_s),
        spool_dir: data_dir.join(UPLINK_SPOOL_DIR),
        spool_bytes: config.spool_mb << 20,
        bridge: uplink::bridge::Bridge::new(config.topics.clone()),
    })
}

/// The uplink's spool, under the data directory.
pub const UPLINK_SPOOL_DIR: &str = "uplink";

/// The operator the fleet is, through the uplink, to the control API (in its messages and its rate).
pub const UPLINK_OPERATOR: &str = "uplink";

/// Which devices the configured `[[recovery]]` routes cover.
pub fn recovery_routes(config: &[RecoveryRoute]) -> Routes {
    let routes: Vec<Route> = config
        .iter()
        .map(|r| Route {
            name: r.name.clone(),
            things: r.things.clone(),
            namespace: r.namespace.clone(),
        })
        .collect();
    Routes::new(&routes)
}

/// Resolves with the cause once the store reports that it cannot continue.
async fn store_fatal(mut health: watch::Receiver<Health>) -> String {
    loop {
        if let Health::Fatal(cause) = &*health.borrow_and_update() {
            return cause.clone();
        }
        if health.changed().await.is_err() {
            // The store is gone, so the gateway is shutting down anyway.
            return std::future::pending().await;
        }
    }
}

/// A service task ended before shutdown: an error if it failed, else the reason to shut down.
fn service_ended(
    name: &'static str,
    outcome: Result<Result<(), crate::broker::BrokerError>, tokio::task::JoinError>,
) -> anyhow::Result<&'static str> {
    match outcome {
        Ok(Ok(())) => Ok(name),
        Ok(Err(e)) => Err(e).with_context(|| format!("the {name} failed")),
        Err(e) => Err(e).with_context(|| format!("the {name} panicked")),
    }
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => { result.context("cannot listen for SIGINT")?; Ok("SIGINT") }
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

/// A store that did not open, as the error to print: the store's own errors name it (and say what to
/// do); sled's errors get its path.
fn open_failed(path: &std::path::Path, error: StoreError) -> anyhow::Error {
    failed(path, "open", error)
}

/// `error` of doing `what` with the store in `path`; sled's errors, which do not name it, get its path.
fn failed(path: &std::path::Path, what: &str, error: StoreError) -> anyhow::Error {
    match error {
        StoreError::Sled(_) | StoreError::Codec { .. } => anyhow::Error::new(error).context(
            format!("cannot {what} the jobs store in {}", path.display()),
        ),
        named => named.into(),
    }
}

/// `sprig store check`: prints a report, returns whether the store is consistent. Run it while the gateway
/// is stopped (sled allows one process per store).
pub fn store_check(config: &Config) -> anyhow::Result<bool> {
    let path = config.gateway.data_dir.join(STORE_DIR);
    anyhow::ensure!(path.exists(), "no store at {}", path.display());
    let store = Store::open_for_maintenance(&path, config.jobs.store_cache_mb << 20)
        .map_err(|e| open_failed(&path, e))?;
    let report = store.check()?;
    println!("{report}");
    Ok(report.is_consistent())
}

/// `sprig store backup --to DIR`: what to print once the store is copied.
pub fn store_backup(config: &Config, to: &std::path::Path) -> anyhow::Result<String> {
    let path = config.gateway.data_dir.join(STORE_DIR);
    anyhow::ensure!(path.exists(), "no store at {}", path.display());
    let summary = store::backup::backup(&path, config.jobs.store_cache_mb << 20, to)
        .map_err(|e| failed(&path, "back up", e))?;
    Ok(format!(
        "backed up the jobs store in {} ({summary}) to {}",
        path.display(),
        to.display()
    ))
}

/// `sprig store restore --from DIR [--force]`: what to print once the backup is the store.
pub fn store_restore(
    config: &Config,
    from: &std::path::Path,
    force: bool,
) -> anyhow::Result<String> {
    let path = config.gateway.data_dir.join(STORE_DIR);
    std::fs::create_dir_all(&config.gateway.data_dir).with_context(|| {
        format!(
            "cannot create data dir {}",
            config.gateway.data_dir.display()
        )
    })?;
    let restored = store::backup::restore(&path, config.jobs.store_cache_mb << 20, from, force)
        .map_err(|e| failed(&path, "restore", e))?;
    let mut text = format!(
        "restored the jobs store in {} from {} ({})",
        path.display(),
        from.display(),
        restored.summary
    );
    if let Some(aside) = restored.moved_aside {
        text.push_str(&format!(
            "; the store that was there is in {}",
            aside.display()
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use tokio_rustls::rustls::pki_types::ServerName;

    use super::*;
    use crate::config::DEFAULT_TOML;
    use sprig_test_support::certs;
    use std::path::Path;

    /// The connection options `[uplink]` (written after the defaults) makes, in a directory holding a CA
    /// (`ca.pem`) and a client certificate it signs (`site-7.pem`, `site-7.key`) beside the config,
    /// after `damage` had its way with the directory.
    fn uplink_options(
        uplink: &str,
        damage: impl FnOnce(&Path),
    ) -> (
        Result<uplink::link::Options, uplink::UplinkError>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::ca("fleet CA");
        ca.write(dir.path(), "ca");
        certs::client_cert(&ca, "site-7").write(dir.path(), "site-7");
        damage(dir.path());
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, format!("{DEFAULT_TOML}\n[uplink]\n{uplink}\n")).unwrap();
        let config = Config::load(&path).unwrap();
        let settings = uplink_settings("gw", dir.path(), config.uplink.as_ref().unwrap()).unwrap();
        (uplink::link_options(&settings), dir)
    }

    /// The TLS part of [`uplink_options`], undamaged.
    fn uplink_tls(uplink: &str) -> (Option<uplink::link::Tls>, tempfile::TempDir) {
        let (options, dir) = uplink_options(uplink, |_| {});
        (options.unwrap().tls, dir)
    }

    #[test]
    fn tls_files_that_do_not_parse_refuse_the_start_naming_their_key() {
        let files = "url = \"mqtts://fleet\"\nca_file = \"ca.pem\"\ncert_file = \"site-7.pem\"\n\
                     key_file = \"site-7.key\"";
        for (file, key) in [
            ("ca.pem", "uplink.ca_file"),
            ("site-7.pem", "uplink.cert_file"),
            ("site-7.key", "uplink.key_file"),
        ] {
            let (options, _dir) = uplink_options(files, |dir| {
                std::fs::write(dir.join(file), "not PEM at all").unwrap()
            });
            let error = options.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                error.starts_with(key) && error.contains(file),
                "{file}: {error}"
            );
        }
    }

    #[test]
    fn the_uplinks_alpn_and_client_certificate_reach_the_tls_configuration() {
        let files = "ca_file = \"ca.pem\"\ncert_file = \"site-7.pem\"\nkey_file = \"site-7.key\"";
        let (tls, _dir) = uplink_tls(&format!(
            "url = \"mqtts://fleet:443\"\n{files}\nalpn = [\"x-amzn-mqtt-ca\"]"
        ));
        let tls = tls.expect("mqtts:// makes a TLS configuration");
        assert_eq!(tls.config.alpn_protocols, vec![b"x-amzn-mqtt-ca".to_vec()]);
        assert!(tls.config.client_auth_cert_resolver.has_certs());
        assert_eq!(tls.server_name, ServerName::try_from("fleet").unwrap());

        // No alpn key: no protocol offered; no client certificate: none sent; a plain url: no TLS.
        let (tls, _) = uplink_tls("url = \"mqtts://fleet:8883\"\nca_file = \"ca.pem\"");
        let tls = tls.unwrap();
        assert!(tls.config.alpn_protocols.is_empty());
        assert!(!tls.config.client_auth_cert_resolver.has_certs());
        assert!(uplink_tls("url = \"mqtt://fleet\"").0.is_none());
    }
}
