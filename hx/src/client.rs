//! A small REST client of the gateway, for the CLI.

use std::time::Duration;

use anyhow::{Context, anyhow};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct GatewayClient {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl GatewayClient {
    pub fn new(base: &str, key: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), key, http })
    }

    /// Sends a request and decodes a JSON answer; an error answer becomes an error that
    /// quotes the server's code and message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<T> {
        let (status, text) = self.send(method, path, query, body).await?;
        self.check(status, &text)?;
        // an empty answer (204) reads as JSON null
        let text = if text.is_empty() { "null" } else { text.as_str() };
        if serde_json::from_str::<Value>(text).is_err() {
            return Err(self.not_helix(status));
        }
        serde_json::from_str(text).with_context(|| format!("the gateway answered {path} with unexpected JSON"))
    }

    /// Sends a GET and returns the answer as text (an export in any format); an error
    /// answer becomes an error as in [`GatewayClient::call`].
    pub async fn text(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<String> {
        let (status, text) = self.send(Method::GET, path, query, None).await?;
        self.check(status, &text)?;
        Ok(text)
    }

    /// Sends a request and returns the status and body, whatever the status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        Ok((status, response.text().await?))
    }

    /// Sends a POST whose answer is a stream of server-sent events, and hands each
    /// event's name and data to `on_event` as they come; no time limit (a reindex takes
    /// as long as it takes). An error answer becomes an error as in [`GatewayClient::call`].
    pub async fn events(
        &self,
        path: &str,
        body: &Value,
        mut on_event: impl FnMut(&str, &str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.post(&url).json(body).timeout(Duration::from_secs(7 * 24 * 3600));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if !status.is_success() {
            return self.check(status, &response.text().await?);
        }
        let mut pending = String::new();
        while let Some(chunk) = response.chunk().await? {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            // events end with an empty line
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let (mut name, mut data) = ("message", String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if !data.is_empty() {
                    on_event(name, &data)?;
                }
            }
        }
        Ok(())
    }
}

impl GatewayClient {
    /// A request that got no answer, as what to do about it: nothing listens (start
    /// Helix, or point at it), no answer in time, or the transport's own reason.
    fn unreachable(&self, error: &reqwest::Error) -> anyhow::Error {
        let base = &self.base;
        let refused = std::iter::successors(std::error::Error::source(error), |e| e.source())
            .filter_map(|e| e.downcast_ref::<std::io::Error>())
            .any(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
        if refused {
            anyhow!(
                "cannot reach the gateway at {base}: nothing answers there. Start Helix with `hx up` (or `make run`), \
                 or point --server/HELIX_SERVER at the gateway"
            )
        } else if error.is_timeout() {
            anyhow!(
                "cannot reach the gateway at {base}: no answer in time. Check that Helix runs there (`hx health`), \
                 or point --server/HELIX_SERVER at the gateway"
            )
        } else {
            let cause = std::iter::successors(Some(error as &dyn std::error::Error), |e| e.source())
                .last()
                .map(ToString::to_string)
                .unwrap_or_default();
            anyhow!(
                "cannot reach the gateway at {base}: {cause}. Start Helix with `hx up` (or `make run`), or point \
                 --server/HELIX_SERVER at the gateway"
            )
        }
    }

    /// An answer that is not one a Helix gateway gives (not JSON, or an error without
    /// Helix's error body): the server URL points elsewhere.
    fn not_helix(&self, status: StatusCode) -> anyhow::Error {
        anyhow!(
            "{} answered (HTTP {}), but not as a Helix gateway does: --server/HELIX_SERVER should name the Helix \
             gateway (`hx up` serves it on http://127.0.0.1:9470, HELIX_GATEWAY_ADDR moves it)",
            self.base,
            status.as_u16()
        )
    }

    /// An error answer as an error quoting the server's code and message; a refused or
    /// missing key says where a key comes from.
    fn check(&self, status: StatusCode, text: &str) -> anyhow::Result<()> {
        if status.is_success() {
            return Ok(());
        }
        let detail: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let (Some(code), Some(message)) = (detail["error"]["code"].as_str(), detail["error"]["message"].as_str())
        else {
            return Err(self.not_helix(status));
        };
        if status == StatusCode::UNAUTHORIZED {
            let how = "set HELIX_API_KEY or pass --api-key; on the gateway's machine `hx` reads the admin key from \
                       HELIX_HOME/admin.key, and `hx pair` issues a key for another device";
            return Err(match self.key {
                None => anyhow!("no API key: the gateway at {} needs one ({code}). To send one, {how}", self.base),
                Some(_) => anyhow!("the gateway refused the key: {message} ({code}). To send another, {how}"),
            });
        }
        Err(anyhow!("{message} ({code}, HTTP {})", status.as_u16()))
    }
}
