//! `-vv`: one line per S3 request attempt, from an interceptor of the SDK:
//! method, host and path, the names of the query parameters (never their
//! values, never a header, so no signature, token or key can show),
//! status, milliseconds and the attempt number.

use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

/// Prints each request attempt to stderr as a `debug:` line.
#[derive(Debug, Default)]
pub struct RequestLog;

/// The attempt as handed to the HTTP client (which takes the request):
/// what it was, and when.
#[derive(Debug, Clone)]
struct Sent {
    what: String,
    at: Instant,
}

impl Storable for Sent {
    type Storer = StoreReplace<Self>;
}

/// `https://host/bucket/key?list-type=2&prefix=a` →
/// `host/bucket/key?list-type&prefix`.
pub fn shown(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let names: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(n, _)| n))
        .collect();
    if names.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", names.join("&"))
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "s3ma-request-log"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        cfg.interceptor_state().store_put(Sent {
            what: format!("{} {}", request.method(), shown(request.uri())),
            at: Instant::now(),
        });
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Not sent at all (it failed before): nothing to say here.
        let Some(sent) = cfg.load::<Sent>() else {
            return Ok(());
        };
        let status = context
            .response()
            .map_or("no answer".to_string(), |r| r.status().as_u16().to_string());
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        crate::report::say(&format!(
            "{}debug: {} {status} {} ms (attempt {attempt})",
            crate::report::stamp(),
            sent.what,
            sent.at.elapsed().as_millis()
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_never_show() {
        assert_eq!(
            shown("https://h:9000/b/k%20x?list-type=2&prefix=a&continuation-token=SECRET"),
            "h:9000/b/k%20x?list-type&prefix&continuation-token"
        );
        assert_eq!(
            shown("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Security-Token=tok"),
            "b.s3.amazonaws.com/k?X-Amz-Signature&X-Amz-Security-Token"
        );
        assert_eq!(shown("http://h/b/?uploads"), "h/b/?uploads");
        assert_eq!(shown("http://h/b/k"), "h/b/k");
    }
}
