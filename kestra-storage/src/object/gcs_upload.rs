//! GCS uploads through the JSON API's resumable uploads.
//!
//! `object_store` writes to GCS with the XML API (a `PUT`, or an XML multipart upload). The JSON API's
//! resumable upload is the other documented way to stream an object of unknown size, the one Google's
//! own clients use, and the only one that fake-gcs-server (the emulator the tests run on) implements:
//! one session (`POST .../upload/storage/v1/b/<bucket>/o?uploadType=resumable&name=<key>`), then the
//! content in chunks of a multiple of 256 KiB (`PUT <session>` with `Content-Range`, answered 308
//! until the last one). The object appears only when the last chunk is accepted; a failed input
//! stream cancels the session (`DELETE <session>`), so nothing half-written is ever visible.
//!
//! Reads, listings and deletions stay with `object_store`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kestra_core::storage::{ByteStream, StorageError};
use object_store::gcp::GcpCredentialProvider;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// GCS requires every chunk but the last to be a multiple of this.
const CHUNK_QUANTUM: usize = 256 * 1024;

/// A failed step of a resumable upload (carried as the source of an `object_store::Error`).
#[derive(Debug, thiserror::Error)]
#[error("GCS resumable upload, {step}: Server returned non-2xx status code: {status}: {body}")]
pub struct UploadError {
    /// Which step failed.
    pub step: &'static str,
    /// The HTTP status (0 when no response came).
    pub status: u16,
    /// The response body, or the transport error.
    pub body: String,
}

/// Streams objects into one bucket with resumable uploads.
#[derive(Debug, Clone)]
pub struct ResumableUploader {
    http: reqwest::Client,
    /// `https://storage.googleapis.com` or an emulator's URL, without a trailing `/`.
    base_url: String,
    bucket: String,
    credentials: GcpCredentialProvider,
    chunk_size: usize,
    max_retries: usize,
}

/// The outcome of sending a request, sorted for the retry loop.
enum Sent {
    Response(reqwest::Response),
    Transient(UploadError),
    Failed(UploadError),
}

impl ResumableUploader {
    /// An uploader for `bucket` at `base_url`; chunks are `chunk_size` rounded down to 256 KiB.
    pub fn new(
        base_url: &str,
        bucket: &str,
        credentials: GcpCredentialProvider,
        chunk_size: usize,
        max_retries: usize,
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<ResumableUploader, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(connect_timeout)
            .build()?;
        Ok(ResumableUploader {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            credentials,
            chunk_size: (chunk_size / CHUNK_QUANTUM).max(1) * CHUNK_QUANTUM,
            max_retries,
        })
    }

    async fn bearer(&self) -> Result<Option<String>, object_store::Error> {
        let credential = self.credentials.get_credential().await?;
        Ok(Some(credential.bearer.clone()).filter(|b| !b.is_empty()))
    }

    /// Send the request `build` makes, retrying transport errors, 429 and 5xx with backoff.
    async fn send(
        &self,
        step: &'static str,
        build: impl Fn(Option<&str>) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, object_store::Error> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let bearer = self.bearer().await?;
            let outcome = match build(bearer.as_deref()).send().await {
                Err(e) => Sent::Transient(UploadError {
                    step,
                    status: 0,
                    body: e.to_string(),
                }),
                Ok(response) => {
                    let status = response.status().as_u16();
                    if response.status().is_success() || status == 308 {
                        Sent::Response(response)
                    } else {
                        let error = UploadError {
                            step,
                            status,
                            body: response.text().await.unwrap_or_default(),
                        };
                        if status == 429 || status >= 500 {
                            Sent::Transient(error)
                        } else {
                            Sent::Failed(error)
                        }
                    }
                }
            };
            match outcome {
                Sent::Response(response) => return Ok(response),
                Sent::Transient(error) if attempt < self.max_retries => {
                    tracing::debug!(error = %error, attempt, "retrying a GCS upload request");
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                }
                Sent::Transient(error) | Sent::Failed(error) => {
                    return Err(object_store::Error::Generic {
                        store: "GCS",
                        source: Box::new(error),
                    });
                }
            }
        }
    }

    /// Start a session for object `name`; returns the session URL.
    async fn start(&self, name: &str) -> Result<String, object_store::Error> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}",
            self.base_url,
            utf8_percent_encode(&self.bucket, NON_ALPHANUMERIC),
            utf8_percent_encode(name, NON_ALPHANUMERIC)
        );
        let response = self
            .send("start", |bearer| {
                let request = self
                    .http
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .body("{}");
                match bearer {
                    Some(b) => request.bearer_auth(b),
                    None => request,
                }
            })
            .await?;
        response
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| object_store::Error::Generic {
                store: "GCS",
                source: Box::new(UploadError {
                    step: "start",
                    status: response.status().as_u16(),
                    body: "no Location header in the answer".into(),
                }),
            })
    }

    /// Send `chunk` at `offset`; `total` is the object's size on the last chunk.
    async fn chunk(
        &self,
        session: &str,
        chunk: Bytes,
        offset: u64,
        total: Option<u64>,
    ) -> Result<(), object_store::Error> {
        let range = match (chunk.is_empty(), total) {
            (true, Some(total)) => format!("bytes */{total}"),
            (_, total) => format!(
                "bytes {}-{}/{}",
                offset,
                offset + chunk.len() as u64 - 1,
                total.map_or("*".to_string(), |t| t.to_string())
            ),
        };
        let response = self
            .send("chunk", |bearer| {
                let request = self
                    .http
                    .put(session)
                    .header("Content-Range", &range)
                    .body(chunk.clone());
                match bearer {
                    Some(b) => request.bearer_auth(b),
                    None => request,
                }
            })
            .await?;
        let done = response.status().is_success();
        match (done, total) {
            (true, Some(_)) | (false, None) => Ok(()),
            (true, None) => Err(object_store::Error::Generic {
                store: "GCS",
                source: Box::new(UploadError {
                    step: "chunk",
                    status: response.status().as_u16(),
                    body: "the upload completed before its last chunk".into(),
                }),
            }),
            (false, Some(_)) => Err(object_store::Error::Generic {
                store: "GCS",
                source: Box::new(UploadError {
                    step: "last chunk",
                    status: response.status().as_u16(),
                    body: "the upload was not completed by its last chunk".into(),
                }),
            }),
        }
    }

    /// Cancel a session (best effort: an abandoned session expires after a week anyway).
    async fn cancel(&self, session: &str) {
        let bearer = self.bearer().await.ok().flatten();
        let request = self.http.delete(session);
        let request = match bearer {
            Some(b) => request.bearer_auth(b),
            None => request,
        };
        if let Err(e) = request.send().await {
            tracing::debug!(error = %e, "could not cancel a GCS resumable upload");
        }
    }

    /// Stream `data` into object `name`. An error of the input stream is returned as is
    /// (`Ok(Err(...))`), after cancelling the session; an upload failure is `Err`.
    pub async fn upload(
        &self,
        name: &str,
        mut data: ByteStream,
    ) -> Result<Result<u64, StorageError>, object_store::Error> {
        let mut session: Option<String> = None;
        let mut buffer = BytesMut::new();
        let mut offset: u64 = 0;
        loop {
            match data.next().await {
                Some(Ok(chunk)) => {
                    buffer.extend_from_slice(&chunk);
                    while buffer.len() > self.chunk_size {
                        let part = buffer.split_to(self.chunk_size).freeze();
                        let url = match &session {
                            Some(url) => url.clone(),
                            None => {
                                let url = self.start(name).await?;
                                session = Some(url.clone());
                                url
                            }
                        };
                        let len = part.len() as u64;
                        if let Err(e) = self.chunk(&url, part, offset, None).await {
                            self.cancel(&url).await;
                            return Err(e);
                        }
                        offset += len;
                    }
                }
                Some(Err(e)) => {
                    if let Some(url) = &session {
                        self.cancel(url).await;
                    }
                    return Ok(Err(e));
                }
                None => break,
            }
        }
        let total = offset + buffer.len() as u64;
        let url = match session {
            Some(url) => url,
            None => self.start(name).await?,
        };
        if let Err(e) = self.chunk(&url, buffer.freeze(), offset, Some(total)).await {
            self.cancel(&url).await;
            return Err(e);
        }
        Ok(Ok(total))
    }
}
