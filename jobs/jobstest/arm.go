package jobstest

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/batchd/batchd/jobs"
)

// armCheck validates what every ARM request needs: an api-version, the
// Sim's workspace, and a management token. It writes the error and returns
// false otherwise.
func (s *Sim) armCheck(w http.ResponseWriter, r *http.Request, action string) bool {
	if _, ok := s.authorize(w, r, AudienceARM, action); !ok {
		return false
	}
	if r.URL.Query().Get("api-version") == "" {
		writeError(w, http.StatusBadRequest, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
		return false
	}
	ws := s.opts.Workspace
	if !strings.EqualFold(r.PathValue("sub"), ws.Subscription) || !strings.EqualFold(r.PathValue("rg"), ws.ResourceGroup) ||
		!strings.EqualFold(r.PathValue("ws"), ws.Name) {
		writeError(w, http.StatusNotFound, "ResourceNotFound",
			fmt.Sprintf("The Resource 'Microsoft.MachineLearningServices/workspaces/%s' under resource group '%s' was not found.", r.PathValue("ws"), r.PathValue("rg")))
		return false
	}
	return true
}

func (s *Sim) handleARMGet(w http.ResponseWriter, r *http.Request) {
	if !s.armCheck(w, r, ActionARMRead) {
		return
	}
	name := r.PathValue("name")
	s.mu.Lock()
	j := s.jobs[name]
	if j == nil {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "UserError", fmt.Sprintf("Job '%s' was not found.", name))
		return
	}
	j.gets++
	resp := s.armJob(j, j.status(time.Now(), true))
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

// handleARMCancel accepts a cancel (202, as the long-running operation it
// is). The job reports CancelRequested on its next read and Canceled after.
// Canceling a finished job changes nothing.
func (s *Sim) handleARMCancel(w http.ResponseWriter, r *http.Request) {
	if !s.armCheck(w, r, ActionARMCancel) {
		return
	}
	name := r.PathValue("name")
	s.mu.Lock()
	j := s.jobs[name]
	if j == nil {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "UserError", fmt.Sprintf("Job '%s' was not found.", name))
		return
	}
	if j.cancel == cancelNone && !j.status(time.Now(), false).Terminal() {
		j.cancel = cancelRequested
		j.seen = 0
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

// handleARMList lists the workspace's jobs newest first (or oldest first,
// with ListOldestFirst), ListPageSize per page, with a nextLink carrying
// $skipToken.
func (s *Sim) handleARMList(w http.ResponseWriter, r *http.Request) {
	if !s.armCheck(w, r, ActionARMRead) {
		return
	}
	skip := 0
	if v := r.URL.Query().Get("$skipToken"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "UserError", "Invalid $skipToken.")
			return
		}
		skip = n
	}
	now := time.Now()
	s.mu.Lock()
	total := len(s.order)
	items := make([]map[string]any, 0, s.opts.ListPageSize)
	for k := skip; k < total && len(items) < s.opts.ListPageSize; k++ {
		i := total - 1 - k
		if s.opts.ListOldestFirst {
			i = k
		}
		j := s.order[i]
		items = append(items, s.armJob(j, j.status(now, true))) // a list reads each job: an observation, as a GET is
	}
	s.mu.Unlock()
	resp := map[string]any{"value": items}
	if next := skip + len(items); next < total {
		q := url.Values{}
		q.Set("api-version", r.URL.Query().Get("api-version"))
		q.Set("$skipToken", strconv.Itoa(next))
		resp["nextLink"] = s.url + r.URL.Path + "?" + q.Encode()
	}
	writeJSON(w, http.StatusOK, resp)
}

// armJob is the ARM job resource (2024-04-01 shape: services, inputs with
// snake_case types). Caller holds s.mu.
func (s *Sim) armJob(j *job, status jobs.Status) map[string]any {
	ws := s.opts.Workspace
	long := func(uri string) string {
		if rest, ok := strings.CutPrefix(uri, "azureml://datastores/"); ok && s.opts.ARMLongURIs {
			return fmt.Sprintf("azureml://subscriptions/%s/resourcegroups/%s/workspaces/%s/datastores/%s", ws.Subscription, ws.ResourceGroup, ws.Name, rest)
		}
		return uri
	}
	inputs := map[string]any{}
	for _, in := range j.inputs {
		m := map[string]any{"jobInputType": snake(in.Type)}
		if in.URI != "" {
			m["uri"] = long(in.URI)
		}
		if in.Value != "" {
			m["value"] = in.Value
		}
		inputs[in.name] = m
	}
	outputs := map[string]any{}
	for _, out := range j.outputs {
		outputs[out.name] = map[string]any{"jobOutputType": snake(out.Type), "uri": long(out.URI)}
	}
	props := map[string]any{
		"status":         string(status),
		"jobType":        "Pipeline",
		"experimentName": firstNonEmpty(j.experiment, j.endpoint),
		"displayName":    j.name,
		"services":       map[string]any{"Studio": map[string]any{"endpoint": s.studioURL(j.name), "jobServiceType": "Studio"}},
		"inputs":         inputs,
		"outputs":        outputs,
		"properties":     map[string]string{"azureml.batchrun": "true", "azureml.deploymentname": j.deployment, "azureml.endpointname": j.endpoint},
	}
	out := map[string]any{
		"id": fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.MachineLearningServices/workspaces/%s/jobs/%s",
			ws.Subscription, ws.ResourceGroup, ws.Name, j.name),
		"name":       j.name,
		"type":       "Microsoft.MachineLearningServices/workspaces/jobs",
		"properties": props,
		"systemData": map[string]any{"createdAt": j.created.UTC().Format(time.RFC3339Nano), "createdBy": j.by, "createdByType": "Application"},
	}
	if e := j.jobError(status); e != nil {
		out["error"] = e
	}
	return out
}

func snake(t string) string {
	switch strings.ToLower(t) {
	case "urifile":
		return "uri_file"
	case "urifolder":
		return "uri_folder"
	case "literal":
		return "literal"
	case "mltable":
		return "mltable"
	}
	return t
}
