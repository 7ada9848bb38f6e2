//! The connection to NATS: options from the settings, the first attempt (whose refusals fail the
//! start), the checks of the streams and the consumer, and `setup`, which creates them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{ConnectErrorKind, ConnectOptions, Event};

use super::{NatsAuth, NatsError, NatsSettings, Shared};

/// Connects and checks. Refused credentials and a wrong stream or consumer are errors; servers
/// that cannot be reached are not: the client keeps trying in the background, the outbox
/// spools, and the checks run on the first connection.
pub(super) async fn connect(
    shared: Arc<Shared>,
) -> Result<(async_nats::Client, jetstream::Context), NatsError> {
    let settings = &shared.settings;
    let first = options(settings, &shared)
        .await?
        .connect(settings.servers.clone())
        .await;
    match first {
        Ok(client) => {
            shared.connected.store(true, Ordering::Relaxed);
            shared.metrics.connected.set(1);
            let jetstream = context(settings, client.clone());
            check(settings, &jetstream).await?;
            Ok((client, jetstream))
        }
        Err(e) => match connect_error(settings, &e) {
            unreachable @ NatsError::Unreachable { .. } => {
                tracing::warn!(error = %unreachable, "starting without NATS; decisions spool locally until it is back");
                shared.set_problem(Some(unreachable.to_string()));
                let client = options(settings, &shared)
                    .await?
                    .retry_on_initial_connect()
                    .connect(settings.servers.clone())
                    .await
                    .map_err(|e| connect_error(settings, &e))?;
                let jetstream = context(settings, client.clone());
                Ok((client, jetstream))
            }
            refused => Err(refused),
        },
    }
}

fn context(settings: &NatsSettings, client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(settings.request_timeout)
        .ack_timeout(settings.request_timeout)
        .max_ack_inflight(settings.publish_in_flight.max(1))
        .build(client)
}

/// The client options every connection takes: credentials, TLS, this gateway's name, the
/// timeouts.
async fn signed_in(settings: &NatsSettings) -> Result<ConnectOptions, NatsError> {
    let mut options =
        match &settings.auth {
            NatsAuth::None => ConnectOptions::new(),
            NatsAuth::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.expose().to_owned())
            }
            NatsAuth::Token(token) => ConnectOptions::with_token(token.expose().to_owned()),
            NatsAuth::Nkey(seed) => ConnectOptions::with_nkey(seed.expose().to_owned()),
            NatsAuth::CredsFile(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| NatsError::Options {
                    key: "nats.creds_file",
                    reason: format!("{}: {e}", path.display()),
                })?,
        };
    if settings.tls.required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &settings.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &settings.tls.client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options
        .name(&settings.instance)
        .connection_timeout(settings.connect_timeout)
        .request_timeout(Some(settings.request_timeout)))
}

/// A gateway's options: [`signed_in`], and an event hook that keeps `connected` (readiness,
/// the publisher's choice between stream and spool) and wakes what waits for a reconnect.
async fn options(
    settings: &NatsSettings,
    shared: &Arc<Shared>,
) -> Result<ConnectOptions, NatsError> {
    let hook = shared.clone();
    Ok(signed_in(settings).await?.event_callback(move |event| {
        let shared = hook.clone();
        async move { on_event(&shared, event) }
    }))
}

fn on_event(shared: &Shared, event: Event) {
    match event {
        Event::Connected => {
            shared.connected.store(true, Ordering::Relaxed);
            shared.metrics.connected.set(1);
            shared.reconnected.notify_waiters();
            tracing::info!("connected to NATS");
        }
        Event::Disconnected | Event::Closed => {
            shared.connected.store(false, Ordering::Relaxed);
            shared.metrics.connected.set(0);
            tracing::warn!("disconnected from NATS; decisions spool locally until it is back");
        }
        Event::ServerError(error) => {
            // Credentials revoked while running, permissions: the operator's to fix.
            tracing::error!(%error, "NATS server error");
            shared.set_problem(Some(format!("NATS server error: {error}")));
        }
        other => tracing::debug!(event = %other, "NATS client event"),
    }
}

fn connect_error(settings: &NatsSettings, error: &async_nats::ConnectError) -> NatsError {
    match error.kind() {
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
            NatsError::Credentials {
                key: settings.auth.key(),
                reason: error.to_string(),
            }
        }
        ConnectErrorKind::ServerParse => NatsError::Options {
            key: "nats.servers",
            reason: error.to_string(),
        },
        ConnectErrorKind::Tls => NatsError::Options {
            key: "nats.tls_ca_file / nats.tls_cert_file / nats.tls_key_file",
            reason: error.to_string(),
        },
        _ => NatsError::Unreachable {
            servers: settings.servers.join(", "),
            reason: error.to_string(),
        },
    }
}

/// The streams and the consumer exist and are what the outbox needs: the records' stream keeps
/// each record until it is acked (work-queue retention) on `<subject>.>`; the consumer is a
/// durable pull consumer on that subject with explicit acks.
/// Returns the records not yet handed to any gateway (the consumer's pending count).
pub(super) async fn check(
    settings: &NatsSettings,
    jetstream: &jetstream::Context,
) -> Result<u64, NatsError> {
    let records = get_stream(jetstream, "stream", &settings.stream).await?;
    let config = &records.cached_info().config;
    let wanted = format!("{}.>", settings.subject);
    if config.retention != stream::RetentionPolicy::WorkQueue {
        return Err(NatsError::Stream {
            key: "stream",
            name: settings.stream.clone(),
            reason: format!(
                "keeps records by {:?} retention, not as a work queue",
                config.retention
            ),
        });
    }
    if !config.subjects.contains(&wanted) {
        return Err(NatsError::Stream {
            key: "stream",
            name: settings.stream.clone(),
            reason: format!("does not take {wanted} (nats.subject)"),
        });
    }
    get_stream(jetstream, "dead_stream", &settings.dead_stream).await?;
    let info = records
        .consumer_info(&settings.consumer)
        .await
        .map_err(|e| match e.kind() {
            jetstream::context::ConsumerInfoErrorKind::NotFound => NatsError::MissingConsumer {
                name: settings.consumer.clone(),
                stream: settings.stream.clone(),
            },
            _ => NatsError::Request(e.to_string()),
        })?;
    consumer_fits(&info.config, &wanted).map_err(|reason| NatsError::Consumer {
        name: settings.consumer.clone(),
        reason,
    })?;
    Ok(info.num_pending)
}

fn consumer_fits(config: &consumer::Config, wanted: &str) -> Result<(), String> {
    if config.deliver_subject.is_some() {
        return Err("it is a push consumer; the outbox pulls".into());
    }
    if config.ack_policy != consumer::AckPolicy::Explicit {
        return Err(format!("acks are {:?}, not explicit", config.ack_policy));
    }
    let filters: Vec<&str> = std::iter::once(config.filter_subject.as_str())
        .chain(config.filter_subjects.iter().map(String::as_str))
        .filter(|f| !f.is_empty())
        .collect();
    if !filters.is_empty() && filters != [wanted] {
        return Err(format!("it reads {}, not {wanted}", filters.join(", ")));
    }
    if config.max_deliver > 0 {
        return Err(format!(
            "it stops after {} deliveries; trackgate decides when a record is dead (max_deliver -1)",
            config.max_deliver
        ));
    }
    Ok(())
}

async fn get_stream(
    jetstream: &jetstream::Context,
    key: &'static str,
    name: &str,
) -> Result<stream::Stream, NatsError> {
    jetstream
        .get_stream(name)
        .await
        .map_err(|e| match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                NatsError::MissingStream {
                    key,
                    name: name.to_owned(),
                }
            }
            _ => NatsError::Request(e.to_string()),
        })
}

/// Creates (or brings up to date) the records' stream, the dead-letter stream and the durable
/// consumer, with `settings.replicas` replicas: what `trackgate nats setup` does once per
/// fleet, and the tests before they start gateways. Returns the connection's JetStream context
/// for what else the fleet sets up (the lease bucket, the directory's object store).
pub async fn setup(settings: &NatsSettings) -> Result<jetstream::Context, NatsError> {
    let client = signed_in(settings)
        .await?
        .connect(settings.servers.clone())
        .await
        .map_err(|e| connect_error(settings, &e))?;
    let jetstream = context(settings, client);
    let request = |e: &dyn std::fmt::Display| NatsError::Request(e.to_string());
    jetstream
        .create_or_update_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{}.>", settings.subject)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            duplicate_window: settings.duplicate_window,
            description: Some("trackgate: track decisions waiting for the CRM".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| request(&e))?;
    jetstream
        .create_or_update_stream(stream::Config {
            name: settings.dead_stream.clone(),
            subjects: vec![format!("{}.>", settings.dead_subject)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            duplicate_window: settings.duplicate_window,
            description: Some("trackgate: records the CRM refused (dead letters)".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| request(&e))?;
    jetstream
        .create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some(settings.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_deliver: -1,
                filter_subject: format!("{}.>", settings.subject),
                max_ack_pending: -1,
                description: Some("trackgate delivery, shared by the fleet".into()),
                ..Default::default()
            },
            &settings.stream,
        )
        .await
        .map_err(|e| request(&e))?;
    Ok(jetstream)
}

/// Runs the checks again whenever the client is connected, every few seconds: a stream that
/// was missing when NATS came back, or one recreated while the gateway ran, shows in readiness
/// until it is right, then clears. While disconnected the problem is the connection itself.
pub(super) async fn keep_checking(shared: Arc<Shared>, jetstream: jetstream::Context) {
    loop {
        if shared.connected.load(Ordering::Relaxed) {
            match check(&shared.settings, &jetstream).await {
                Ok(lag) => {
                    // Also when nothing is being pulled (delivery paused or off), the lag
                    // stays current.
                    shared.metrics.consumer_lag.set(lag as i64);
                    shared.set_problem(None);
                }
                Err(error) => {
                    tracing::error!(%error, "the NATS outbox is not usable");
                    shared.set_problem(Some(error.to_string()));
                }
            }
        }
        let _ = tokio::time::timeout(RECHECK_INTERVAL, shared.reconnected.notified()).await;
    }
}

/// How often `keep_checking` looks again.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);
