//! What a standby restored from a snapshot learns of the request ids
//! the snapshot covers: it holds none of those records, so it asks the
//! primary for their ids (`Peer::fetch_request_ids`), one reply at a
//! time, to keep them (`WalStore::set_snapshot_ids`) and recognise retries
//! of those writes once promoted.

use super::{Ctx, Fatal};
use crate::transport::Header;
use crate::types::{Lsn, RequestIdAt};

/// Tries per reply of `request_ids_covered` before the rejoin gives up
/// this attempt.
pub(super) const ID_FETCH_TRIES: u32 = 3;

/// The request ids of the records up to `up_to` (the snapshot's LSN) that
/// the primary recognises, asked for one reply at a time, the newest
/// `Config::max_request_ids` kept. `Err(None)`: the link failed (the
/// caller retries the rejoin); a primary that serves none (an older
/// walrep) gives none, said in the log.
pub(super) async fn request_ids_covered(
    ctx: &Ctx,
    header: &Header,
    up_to: Lsn,
) -> Result<Vec<RequestIdAt>, Option<Fatal>> {
    let capacity = ctx.cfg.max_request_ids;
    let mut ids = std::collections::VecDeque::new();
    let mut after = Lsn::ZERO;
    while capacity > 0 && after < up_to {
        let mut tries = 0;
        let reply = loop {
            tries += 1;
            match ctx
                .peer
                .fetch_request_ids(header.clone(), after, up_to)
                .await
            {
                Ok(reply) => break reply,
                // A blip should not cost the received snapshot (a retried
                // rejoin may find it replaced and start over); a refusal
                // would only be repeated.
                Err(e) if e.is_unreachable() && tries < ID_FETCH_TRIES => {
                    tracing::debug!(error = %e, tries, "rejoin: fetching request ids failed; trying again");
                    tokio::time::sleep(ctx.cfg.reconnect_backoff_min * tries).await;
                }
                Err(e) => {
                    tracing::info!(error = %e, "rejoin: the request ids the snapshot covers could not be fetched");
                    return Err(None);
                }
            }
        };
        let Some(reply) = reply else {
            tracing::warn!(
                leader = %ctx.leader,
                "the primary lists no request ids (an older walrep): retries of the writes its snapshot covers are not recognised here"
            );
            break;
        };
        let Some(last) = reply.ids.last().map(|e| e.lsn) else {
            break;
        };
        ids.extend(reply.ids);
        while ids.len() > capacity {
            ids.pop_front();
        }
        if !reply.more {
            break;
        }
        after = last;
    }
    Ok(ids.into())
}
