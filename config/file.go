package config

import (
	"context"
	"errors"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/triggers/blob"
	"github.com/batchd/batchd/triggers/cron"
	"github.com/batchd/batchd/triggers/natsmsg"
)

// File is the loaded, validated pipelines file, compiled into the runtime
// types of the packages that use it.
type File struct {
	Path       string
	Endpoints  map[string]orchestrator.Endpoint
	Datastores map[string]datastores.Datastore
	// Accounts say how batchd itself reaches storage accounts (the
	// `storage.accounts` section), with key and SAS files already read.
	Accounts  map[string]datastores.Account
	Pipelines map[string]*orchestrator.Pipeline
	Triggers  Triggers
}

// Triggers are the pipelines' trigger sections, keyed by pipeline name.
type Triggers struct {
	Blob map[string]blob.Config
	Cron map[string]cron.Config
	NATS map[string]natsmsg.Config
}

// LoadFile reads, decodes (strictly: unknown keys are errors), validates and
// compiles the pipelines file at path. A returned error is an *Error listing
// every problem with its path, e.g.
// "pipelines.score.inputs.data.uri: unknown field .Blob.Nmae".
func LoadFile(path string) (*File, error) {
	return nil, errors.New("config.LoadFile: not implemented yet")
}

// Load reads the environment and then the pipelines file it names (or
// pipelinesPath when not empty), reporting the problems of both together.
func Load(ctx context.Context, l Lookuper, pipelinesPath string) (*Env, *File, error) {
	return nil, nil, errors.New("config.Load: not implemented yet")
}
