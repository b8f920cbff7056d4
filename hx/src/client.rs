//! A small REST client of the gateway, for the CLI.

use std::time::Duration;

use anyhow::{Context, bail};
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
        check(status, &text)?;
        // an empty answer (204) reads as JSON null
        let text = if text.is_empty() { "null" } else { text.as_str() };
        serde_json::from_str(text).with_context(|| format!("the gateway answered {path} with unexpected JSON"))
    }

    /// Sends a GET and returns the answer as text (an export in any format); an error
    /// answer becomes an error as in [`GatewayClient::call`].
    pub async fn text(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<String> {
        let (status, text) = self.send(Method::GET, path, query, None).await?;
        check(status, &text)?;
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
        let response = request.send().await.with_context(|| format!("cannot reach the gateway at {}", self.base))?;
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
        let mut response =
            request.send().await.with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            return check(status, &response.text().await?);
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

/// An error answer as an error quoting the server's code and message.
fn check(status: StatusCode, text: &str) -> anyhow::Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let detail: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let code = detail["error"]["code"].as_str().unwrap_or("http_error");
    let message = detail["error"]["message"].as_str().unwrap_or(text);
    if status == StatusCode::UNAUTHORIZED {
        bail!(
            "{message} ({code}); set HELIX_API_KEY or --api-key, or run on the gateway's machine (HELIX_HOME/admin.key)"
        );
    }
    bail!("{message} ({code}, HTTP {})", status.as_u16())
}
