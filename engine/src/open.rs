//! Opening a shard: the builder's open, where the core meets its
//! extensions.
//!
//! The core's recovery ([`crate::recovery`]) rebuilds the shard from its
//! directory; then the extensions the builder asked for are attached
//! ([`ShardHooks`]) and the shard starts. This is the one module that
//! names both the core and the extensions it attaches (object storage
//! today; a cold restore comes in through the builder's directory
//! preparation), so that neither the shard nor recovery names any
//! extension.

use crate::config::ShardBuilder;
use crate::error::Result;
use crate::machine::StateMachine;
use crate::object_store::ShardObjects;
use crate::recovery::recover;
use crate::shard::{Shard, ShardHooks};
use ringstore_journal::storage::Storage;
use std::rc::Rc;

impl<M: StateMachine, S: Storage> ShardBuilder<M, S> {
    /// Validates the settings, recovers the shard (see [`crate::recovery`])
    /// and starts its compaction task.
    pub async fn open(self) -> Result<Shard<M, S>> {
        open(self).await
    }
}

impl<M: StateMachine, S: Storage> Shard<M, S> {
    /// Opens the shard `config` describes inside the calling glommio
    /// executor: recovers it and starts its compaction task (the same as
    /// [`ShardBuilder::open`]). No threads are started; with an object store
    /// the requests go to its one I/O thread.
    pub async fn open(config: ShardBuilder<M, S>) -> Result<Shard<M, S>> {
        open(config).await
    }
}

async fn open<M: StateMachine, S: Storage>(builder: ShardBuilder<M, S>) -> Result<Shard<M, S>> {
    builder.validate_early()?;
    // The settings are a cheap handle; the builder keeps its copy for the
    // validation inside recovery (the config records the upload mode).
    let object_store = builder.object_store_settings().cloned();
    let recovered = recover(builder).await?;
    let mut hooks: Vec<Rc<dyn ShardHooks<M, S>>> = Vec::new();
    if let Some(settings) = object_store {
        match ShardObjects::open(settings, &recovered.config.dir, recovered.domain).await {
            Ok(objects) => hooks.push(Rc::new(objects)),
            Err(e) => {
                let _ = recovered.journal.close().await;
                return Err(e.into());
            }
        }
    }
    Ok(Shard::start(recovered, hooks))
}
