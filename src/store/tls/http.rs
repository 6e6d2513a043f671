//! The HTTP client for a CA bundle: hyper-util's pooled client over
//! hyper-rustls, with the connect and read timeouts, the error kinds and the
//! connection poisoning of the SDK's own client, so that retries behave
//! the same whichever client a run uses.

use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connection::{CaptureSmithyConnection, ConnectionMetadata};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector as TcpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{chain, Handshake};

/// A client for http and https URLs whose TLS is `config`; a failed
/// handshake is tagged with `bundle`.
pub(super) fn client(config: rustls::ClientConfig, bundle: Arc<Path>) -> SharedHttpClient {
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    // HTTP/1.1 only, what S3 services speak: HTTP/2's own failures
    // (GOAWAY, refused streams) would need error kinds of their own.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    SharedHttpClient::new(Client {
        https,
        bundle,
        connectors: Mutex::default(),
    })
}

/// One connection's setup took longer than its timeout.
#[derive(Debug)]
struct TimedOut {
    what: &'static str,
    after: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} timed out after {:?}", self.what, self.after)
    }
}

impl StdError for TimedOut {}

/// The connect and the read timeout of a request.
type Timeouts = (Option<Duration>, Option<Duration>);

/// The HTTP client given to the SDK: one connector (and connection pool)
/// per pair of timeouts, as the SDK's own client keeps them.
#[derive(Debug)]
struct Client {
    https: HttpsConnector<TcpConnector>,
    bundle: Arc<Path>,
    connectors: Mutex<HashMap<Timeouts, SharedHttpConnector>>,
}

impl HttpClient for Client {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connectors
            .entry(key)
            .or_insert_with(|| SharedHttpConnector::new(self.connector(key)))
            .clone()
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new("hyper", Some(Cow::Borrowed("1.x"))))
    }
}

impl Client {
    fn connector(&self, (connect, read): Timeouts) -> Connector {
        let connect = Connect {
            https: self.https.clone(),
            bundle: self.bundle.clone(),
            timeout: connect,
        };
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connect);
        Connector {
            client,
            read_timeout: read,
        }
    }
}

/// Sends requests on pooled connections, each response within the read
/// timeout.
#[derive(Debug)]
struct Connector {
    client: hyper_util::client::legacy::Client<Connect, SdkBody>,
    read_timeout: Option<Duration>,
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let mut request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        capture_for_poisoning(&mut request);
        let sending = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let response = match read_timeout {
                Some(after) => tokio::time::timeout(after, sending).await.map_err(|_| {
                    ConnectorError::timeout(Box::new(TimedOut {
                        what: "waiting for the response",
                        after,
                    }))
                })?,
                None => sending.await,
            };
            let response = response.map_err(|e| connector_error(e.into()))?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// Lets the SDK close the request's connection after a transient failure
/// rather than reuse it (the SDK's connection poisoning).
fn capture_for_poisoning(request: &mut hyper::Request<SdkBody>) {
    let captured = capture_connection(request);
    if let Some(sdk) = request.extensions().get::<CaptureSmithyConnection>() {
        sdk.set_connection_retriever(move || {
            captured.connection_metadata().as_ref()?;
            let captured = captured.clone();
            let poison = move || {
                if let Some(connection) = captured.connection_metadata().as_ref() {
                    connection.poison();
                }
            };
            Some(
                ConnectionMetadata::builder()
                    .proxied(false)
                    .poison_fn(poison)
                    .build(),
            )
        });
    }
}

/// The SDK's error kind for a failed request, as its own client tells
/// them: timeouts and I/O errors are retried, a failed TLS handshake is
/// not (the certificate will not change), the body's errors are the
/// caller's.
fn connector_error(err: BoxError) -> ConnectorError {
    if chain(err.as_ref()).any(|e| e.is::<TimedOut>()) {
        return ConnectorError::timeout(err);
    }
    if chain(err.as_ref()).any(|e| e.is::<Handshake>()) {
        return ConnectorError::other(err, None);
    }
    let hyper_error = chain(err.as_ref()).find_map(|e| e.downcast_ref::<hyper::Error>());
    if let Some(h) = hyper_error {
        if h.is_timeout() {
            return ConnectorError::timeout(err);
        }
        if h.is_user() {
            return ConnectorError::user(err);
        }
        if h.is_closed() || h.is_canceled() || chain(h).any(|e| e.is::<std::io::Error>()) {
            return ConnectorError::io(err);
        }
        if h.is_incomplete_message() {
            return ConnectorError::other(err, Some(ErrorKind::TransientError));
        }
        return ConnectorError::other(err, None);
    }
    let connect_failed = chain(err.as_ref()).any(|e| {
        e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|l| l.is_connect())
            || e.is::<std::io::Error>()
    });
    if connect_failed {
        return ConnectorError::io(err);
    }
    ConnectorError::other(err, None)
}

type Stream = <HttpsConnector<TcpConnector> as tower_service::Service<hyper::Uri>>::Response;

/// Opens a connection (TCP, then TLS for https) within the connect
/// timeout, and tags a failed handshake with the bundle.
#[derive(Debug, Clone)]
struct Connect {
    https: HttpsConnector<TcpConnector>,
    bundle: Arc<Path>,
    timeout: Option<Duration>,
}

impl tower_service::Service<hyper::Uri> for Connect {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.https.poll_ready(cx)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connecting = self.https.call(uri);
        let bundle = self.bundle.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let connected = match timeout {
                Some(after) => match tokio::time::timeout(after, connecting).await {
                    Ok(connected) => connected,
                    Err(_) => {
                        return Err(Box::new(TimedOut {
                            what: "connecting",
                            after,
                        }) as BoxError)
                    }
                },
                None => connecting.await,
            };
            connected.map_err(|source| {
                if chain(source.as_ref()).any(|e| e.is::<rustls::Error>()) {
                    Box::new(Handshake { bundle, source }) as BoxError
                } else {
                    source
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_follow_the_sdk() {
        let timed_out = TimedOut {
            what: "connecting",
            after: Duration::from_secs(1),
        };
        assert!(connector_error(Box::new(timed_out)).is_timeout());
        let failed = Handshake {
            bundle: Path::new("/ca.pem").into(),
            source: "alert".into(),
        };
        let err = connector_error(Box::new(failed));
        assert!(!err.is_io() && !err.is_timeout() && err.as_other().is_none());
        assert!(connector_error(Box::new(std::io::Error::other("reset"))).is_io());
    }
}
