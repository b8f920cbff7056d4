//! The embedding stage in front of the writer: every change bound for the index passes
//! through it in order, and the documents of a change get their vectors here, in
//! batches, before the writer thread takes them.
//!
//! It is a task of its own so the writer keeps committing while the next batch is
//! embedded (the embedder itself works off the executor: a local model on blocking
//! threads, a remote one over HTTP). What waits when a batch begins is embedded
//! together, up to [`MAX_BATCH`] documents: one event alone is embedded at once, a
//! reindex or a burst of events fills whole batches.
//!
//! A batch the embedder fails is answered with the error and never reaches the writer:
//! an event is then redelivered, a push or a reindex page reports it.

use std::sync::Arc;
use std::sync::mpsc::Sender;

use helix_core::{Error, Result};
use helix_embed::Embedder;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::writer::{Command, Op};

/// Documents embedded in one call at most.
pub const MAX_BATCH: usize = 64;

/// Runs until every handle is gone or a shutdown passed through.
pub async fn run(mut commands: UnboundedReceiver<Command>, writer: Sender<Command>, embedder: Arc<dyn Embedder>) {
    let mut batch: Vec<Command> = Vec::new();
    while let Some(first) = commands.recv().await {
        batch.push(first);
        let mut documents = missing_vectors(&batch[0]);
        while documents < MAX_BATCH {
            match commands.try_recv() {
                Ok(next) => {
                    documents += missing_vectors(&next);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let result = if documents > 0 { embed(&mut batch, embedder.as_ref()).await } else { Ok(()) };
        let mut stop = false;
        for command in batch.drain(..) {
            match (&result, command) {
                (Err(error), Command::Apply { reply, ops, .. }) if ops.iter().any(needs_vector) => {
                    let _ = reply.send(Err(error.clone()));
                }
                (_, command) => {
                    stop |= matches!(command, Command::Shutdown);
                    if writer.send(command).is_err() {
                        return;
                    }
                }
            }
        }
        if stop {
            return;
        }
    }
}

fn needs_vector(op: &Op) -> bool {
    matches!(op, Op::Upsert(doc) if doc.embedding.is_none())
}

fn missing_vectors(command: &Command) -> usize {
    match command {
        Command::Apply { ops, .. } => ops.iter().filter(|op| needs_vector(op)).count(),
        _ => 0,
    }
}

/// Embeds every document of the batch that has no vector, in calls of [`MAX_BATCH`].
async fn embed(batch: &mut [Command], embedder: &dyn Embedder) -> Result<()> {
    let mut slots: Vec<&mut Option<Vec<f32>>> = Vec::new();
    let mut texts = Vec::new();
    for command in batch.iter_mut() {
        if let Command::Apply { ops, .. } = command {
            for op in ops.iter_mut() {
                if let Op::Upsert(doc) = op
                    && doc.embedding.is_none()
                {
                    texts.push(doc.embedding_text());
                    slots.push(&mut doc.embedding);
                }
            }
        }
    }
    let mut slots = slots.into_iter();
    for chunk in texts.chunks(MAX_BATCH) {
        let vectors = embedder.embed(chunk).await.map_err(|e| Error::unavailable(format!("embedding failed: {e}")))?;
        if vectors.len() != chunk.len() {
            return Err(Error::internal(format!(
                "the embedder answered {} vectors for {} texts",
                vectors.len(),
                chunk.len()
            )));
        }
        // vectors first: zip stops when its first side ends, and a slot taken from
        // `slots` before that would be lost to the next chunk
        for (vector, slot) in vectors.into_iter().zip(slots.by_ref()) {
            *slot = Some(vector);
        }
    }
    Ok(())
}
