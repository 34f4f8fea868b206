package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/apiclient"
)

// devMaxUpload bounds `batchd-dev upload` (one Put Blob, read into memory):
// it is for sample files.
const devMaxUpload = 64 << 20

// devAttach finds the running batchd-dev of dir through its dev.json.
func devAttach(c *cli, cmd, dir string) (*devState, bool) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd-dev %s: --state: %v\n", cmd, err)
		return nil, false
	}
	if !devRunning(abs) {
		fmt.Fprintf(c.stderr, "batchd-dev %s: no batchd-dev is running on %s: start one with `make demo` (or `batchd-dev`), or pass --state DIR\n", cmd, abs)
		return nil, false
	}
	st, err := readDevState(abs)
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd-dev %s: batchd-dev on %s is still starting, or its %s is unreadable: %v\n", cmd, abs, devStateFile, err)
		return nil, false
	}
	return st, true
}

const devUploadUsage = `Usage: batchd-dev upload FILE [--container C] [--name NAME] [--wait] [--timeout D] [--state DIR]

Uploads FILE to the Azurite of the running batchd-dev and posts the
BlobCreated event Event Grid would send to batchd's /eventgrid webhook (the
poller would find the file too; both give the same run). Prints the run id.
Uploading a file again under the same name is a new version of the blob (a
new eTag), so a new run.
`

// devUpload is `batchd-dev upload`.
func devUpload(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "upload", devUploadUsage)
	container := fs.String("container", devUploadsCont, "the container to upload to (the uploads pipeline watches "+devUploadsCont+")")
	name := fs.String("name", "", "the blob's name (default: FILE's base name)")
	wait := fs.Bool("wait", false, "follow the run until it ends")
	timeout := fs.Duration("timeout", 0, "with --wait: stop waiting after this long and exit 5 (0: no limit)")
	stateDir := fs.String("state", devDefaultState, "the state directory of the running batchd-dev")
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	if len(pos) != 1 {
		fmt.Fprintln(c.stderr, "batchd-dev upload: give exactly one FILE")
		return exitUsage
	}
	st, ok := devAttach(c, "upload", *stateDir)
	if !ok {
		return exitUsage
	}
	secret, err := readSecretFile(st.WebhookSecretFile)
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd-dev upload: webhook secret: %v\n", err)
		return exitUsage
	}
	data, err := readLimited(pos[0], devMaxUpload)
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd-dev upload: %v\n", err)
		return exitUsage
	}
	blobName := *name
	if blobName == "" {
		blobName = filepath.Base(pos[0])
	}
	blobName = strings.TrimPrefix(filepath.ToSlash(blobName), "/")

	blobs, err := newDevBlobs(st.AccountURL)
	if err == nil {
		err = blobs.ensureContainer(ctx, *container)
	}
	var u uploaded
	if err == nil {
		u, err = blobs.put(ctx, *container, blobName, data, false)
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd-dev upload: %v\n", err)
		return exitTransient
	}
	fmt.Fprintf(c.stdout, "Uploaded %s/%s (%d bytes, eTag %s).\n", u.Container, u.Name, u.Size, u.ETag)
	a, err := postEvent(ctx, st.URL, secret, blobCreatedEvent(u))
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd-dev upload: %v (the poller will still find the file)\n", err)
		return exitTransient
	}
	ids := devRunIDs(st, u)
	fmt.Fprintf(c.stdout, "BlobCreated event posted %s\n", describeDelivery(a, ids))
	if a.Emitted+a.Duplicate == 0 {
		if a.Rejected > 0 {
			return exitRejected
		}
		return exitOK
	}
	var runIDs []string
	for _, p := range cmdutil.SortedNames(ids) {
		runIDs = append(runIDs, ids[p])
		fmt.Fprintf(c.stdout, "Run %s (pipeline %s): follow it with `%s runs show %s`.\n", ids[p], p, batchdCommandName(), ids[p])
	}
	if !*wait || len(runIDs) == 0 {
		return exitOK
	}
	return devWait(ctx, c, "upload", st.URL, runIDs, *timeout)
}

const devPublishUsage = `Usage: batchd-dev publish SUBJECT JSON [--wait] [--timeout D] [--state DIR]

Publishes a message on the NATS server of the running batchd-dev, as a
request: the NATS trigger answers with the run id (or why it took none).
The sample pipeline on-message listens on demo.score and reads the input
from the body's "uri": '{"uri":"http://127.0.0.1:10000/devstoreaccount1/incoming/sample-1.csv"}'.
The same message published twice is the same run.
`

// devPublish is `batchd-dev publish`.
func devPublish(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "publish", devPublishUsage)
	wait := fs.Bool("wait", false, "follow the run until it ends")
	timeout := fs.Duration("timeout", 0, "with --wait: stop waiting after this long and exit 5 (0: no limit)")
	stateDir := fs.String("state", devDefaultState, "the state directory of the running batchd-dev")
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	if len(pos) != 2 {
		fmt.Fprintln(c.stderr, "batchd-dev publish: give SUBJECT and a JSON body, e.g. demo.score '{\"uri\":\"…\"}'")
		return exitUsage
	}
	if !json.Valid([]byte(pos[1])) {
		fmt.Fprintf(c.stderr, "batchd-dev publish: the body %q is not JSON\n", pos[1])
		return exitUsage
	}
	st, ok := devAttach(c, "publish", *stateDir)
	if !ok {
		return exitUsage
	}
	published := time.Now()
	r, err := publishRequest(ctx, st.NATSURL, st.NATSTokenFile, pos[0], []byte(pos[1]))
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd-dev publish: %v\n", err)
		return exitTransient
	}
	// The trigger's answer knows duplicates only within the intake's
	// dedupe window; the ledger knows them forever.
	if !r.Duplicate && r.RunID != "" {
		if run, err := apiclient.New(st.URL, "", nil).GetRun(ctx, r.RunID); err == nil && run.Created.Before(published.Add(-time.Second)) {
			r.Duplicate = true
		}
	}
	switch {
	case r.Error != "" && r.State == string(orchestrator.StateRejected):
		fmt.Fprintf(c.stdout, "Run %s rejected: %s\n", r.RunID, r.Error)
		return exitRejected
	case r.Error != "":
		fmt.Fprintf(c.stderr, "batchd-dev publish: not taken: %s\n", r.Error)
		return exitTransient
	case r.Duplicate:
		fmt.Fprintf(c.stdout, "Run %s exists already for this message (the same message is the same run).\n", r.RunID)
	default:
		fmt.Fprintf(c.stdout, "Run %s accepted: follow it with `%s runs show %s`.\n", r.RunID, batchdCommandName(), r.RunID)
	}
	if !*wait {
		return exitOK
	}
	return devWait(ctx, c, "publish", st.URL, []string{r.RunID}, *timeout)
}

// devWait follows runs to their end like `batchd pipelines run --wait`
// and returns the exit code of the worst.
func devWait(ctx context.Context, c *cli, what, base string, ids []string, timeout time.Duration) int {
	cl := apiclient.New(base, "", nil)
	code := exitOK
	for _, id := range ids {
		run, err := cmdutil.WaitRun(ctx, c.stderr, cl, id, timeout)
		if err != nil {
			if errors.Is(err, cmdutil.ErrWaitTimeout) {
				fmt.Fprintf(c.stderr, "batchd-dev %s: %v (--timeout %s); run %s goes on\n", what, err, timeout, id)
				return exitTransient
			}
			if ctx.Err() != nil {
				fmt.Fprintf(c.stderr, "batchd-dev %s: interrupted; run %s goes on\n", what, id)
				return exitTransient
			}
			fmt.Fprintf(c.stderr, "batchd-dev %s: %v\n", what, err)
			return cmdutil.APIExitCode(err)
		}
		cmdutil.PrintRun(c.stdout, run)
		if e := cmdutil.StateExit(run.State); e != exitOK {
			code = e
		}
	}
	return code
}

func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d MiB; batchd-dev upload is for sample files", path, limit>>20)
	}
	return data, nil
}
