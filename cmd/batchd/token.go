package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/jobs"
)

const tokenUsage = `Usage: batchd token [--scope ml|management] [--json]

Gets a token the way batchd does (BATCHD_CREDENTIAL and the AZURE_* variables)
and shows its decoded claims: audience, object id, app id, tenant, expiry. The
token itself is never printed. Use it to check which identity batchd runs as
and that the audience is right: the batch endpoint needs https://ml.azure.com,
ARM (job status, cancel, list) https://management.azure.com.

Exit codes: 0 a token was obtained; 2 usage or configuration error;
3 no token (the message says what probably went wrong); 5 other failures.

Flags:
`

// cmdToken is `batchd token`.
func cmdToken(ctx context.Context, c *cli, args []string) int {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	scopeName := fs.String("scope", "ml", "which token: ml (the batch endpoint, BATCHD_ML_SCOPE) or management (ARM, BATCHD_ARM_SCOPE)")
	asJSON := fs.Bool("json", false, "print the claims as JSON")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, tokenUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "batchd token: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	env, err := config.LoadEnv(ctx, c.env)
	if err != nil {
		return cmdutil.ConfigExit(c.stderr, err)
	}
	var scope string
	switch *scopeName {
	case "ml":
		scope = env.MLScope
	case "management", "arm":
		scope = env.ARMScope
	default:
		fmt.Fprintf(c.stderr, "batchd token: --scope %q is not ml or management\n", *scopeName)
		return exitUsage
	}
	_, cred, code := invokeClient(c, env)
	if cred == nil {
		return code
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	claims, err := jobs.TokenClaims(tctx, cred, scope)
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd token: %v\n", err)
		if errors.Is(err, jobs.ErrNotJWT) {
			return exitTransient
		}
		return invokeExitCode(err)
	}
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(claims)
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "credential\t%s\n", env.Credential.Kind)
	fmt.Fprintf(tw, "scope\t%s\n", claims.Scope)
	fmt.Fprintf(tw, "audience (aud)\t%s\n", invokeOrDash(claims.Audience))
	fmt.Fprintf(tw, "object id (oid)\t%s\n", invokeOrDash(claims.ObjectID))
	fmt.Fprintf(tw, "app id (appid)\t%s\n", invokeOrDash(claims.AppID))
	fmt.Fprintf(tw, "tenant (tid)\t%s\n", invokeOrDash(claims.TenantID))
	fmt.Fprintf(tw, "expires (exp)\t%s (in %s)\n", claims.ExpiresAt.Format(time.RFC3339), time.Until(claims.ExpiresAt).Round(time.Second))
	_ = tw.Flush()
	return exitOK
}
