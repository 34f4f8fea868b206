package triggers

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StateBucketConfig is the configuration of the triggers' KV bucket. It
// allows per-key TTLs (LimitMarkerTTL), which the triggers use to drop cron
// slot markers and the sequencers of blobs nobody sweeps. replicas is 1 for
// the embedded server and 3 on a cluster.
func StateBucketConfig(name string, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         name,
		Description:    "batchd trigger state: cron slots, blob sequencers, poller leases, folder batches",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       max(replicas, 1),
		LimitMarkerTTL: time.Minute,
	}
}
