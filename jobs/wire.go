package jobs

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// The invoke body. Keys follow the documented examples (PascalCase
// InputData/JobInputType/Uri, see "How to access data in batch endpoint
// jobs"); the per-job overrides use the BatchJob model's camelCase keys
// (miniBatchSize, compute.instanceCount, errorThreshold, retrySettings),
// sent only when set. The service matches keys case-insensitively.
type wireRequest struct {
	Properties wireRequestProps `json:"properties"`
}

type wireRequestProps struct {
	InputData      map[string]wireInput  `json:"InputData"`
	OutputData     map[string]wireOutput `json:"OutputData,omitempty"`
	Properties     map[string]string     `json:"properties,omitempty"`
	MiniBatchSize  *int64                `json:"miniBatchSize,omitempty"`
	Compute        *wireCompute          `json:"compute,omitempty"`
	ErrorThreshold *int                  `json:"errorThreshold,omitempty"`
	RetrySettings  *wireRetry            `json:"retrySettings,omitempty"`
}

type wireInput struct {
	JobInputType string `json:"JobInputType"`
	URI          string `json:"Uri,omitempty"`
	Value        string `json:"Value,omitempty"`
	Mode         string `json:"Mode,omitempty"`
}

type wireOutput struct {
	JobOutputType string `json:"JobOutputType"`
	URI           string `json:"Uri,omitempty"`
	Mode          string `json:"Mode,omitempty"`
}

type wireCompute struct {
	InstanceCount *int `json:"instanceCount,omitempty"`
}

type wireRetry struct {
	MaxRetries *int   `json:"maxRetries,omitempty"`
	Timeout    string `json:"timeout,omitempty"`
}

// RequestBody returns the JSON body Submit would POST for req. It checks
// what the client can check without knowing the deployment: every input has
// a type and a URI (or a value, for Literal), every output a type and a URI.
// Errors wrap ErrInvalidRequest.
func RequestBody(req JobRequest) ([]byte, error) {
	w := wireRequest{Properties: wireRequestProps{InputData: map[string]wireInput{}}}
	for name, in := range req.Inputs {
		if name == "" {
			return nil, fmt.Errorf("%w: an input has an empty name", ErrInvalidRequest)
		}
		typ := canonicalType(in.Type)
		switch {
		case typ == "":
			return nil, fmt.Errorf("%w: input %q has no type", ErrInvalidRequest, name)
		case typ == TypeLiteral:
			w.Properties.InputData[name] = wireInput{JobInputType: TypeLiteral, Value: in.Value}
			continue
		case in.URI == "":
			return nil, fmt.Errorf("%w: input %q (%s) has no uri", ErrInvalidRequest, name, typ)
		}
		w.Properties.InputData[name] = wireInput{JobInputType: typ, URI: in.URI, Mode: in.Mode}
	}
	if len(req.Outputs) > 0 {
		w.Properties.OutputData = map[string]wireOutput{}
		for name, out := range req.Outputs {
			typ := canonicalType(out.Type)
			switch {
			case name == "":
				return nil, fmt.Errorf("%w: an output has an empty name", ErrInvalidRequest)
			case typ == "":
				return nil, fmt.Errorf("%w: output %q has no type", ErrInvalidRequest, name)
			case out.URI == "":
				return nil, fmt.Errorf("%w: output %q has no uri", ErrInvalidRequest, name)
			}
			w.Properties.OutputData[name] = wireOutput{JobOutputType: typ, URI: out.URI, Mode: out.Mode}
		}
	}
	if req.ExperimentName != "" {
		w.Properties.Properties = map[string]string{"experimentName": req.ExperimentName}
	}
	s := req.Settings
	w.Properties.MiniBatchSize = s.MiniBatchSize
	w.Properties.ErrorThreshold = s.ErrorThreshold
	if s.InstanceCount != nil {
		w.Properties.Compute = &wireCompute{InstanceCount: s.InstanceCount}
	}
	if s.MaxRetries != nil || s.RetryTimeout != nil {
		w.Properties.RetrySettings = &wireRetry{MaxRetries: s.MaxRetries}
		if s.RetryTimeout != nil {
			if *s.RetryTimeout <= 0 {
				return nil, fmt.Errorf("%w: retry timeout %s is not positive", ErrInvalidRequest, *s.RetryTimeout)
			}
			w.Properties.RetrySettings.Timeout = ISODuration(*s.RetryTimeout)
		}
	}
	return json.Marshal(w)
}

// canonicalType maps the spellings people use (UriFile, uri_file, urifile)
// to the documented JobInputType values; anything else is kept as given so
// that the service, which knows its types, can judge it.
func canonicalType(t string) string {
	switch strings.ToLower(strings.ReplaceAll(t, "_", "")) {
	case "urifile":
		return TypeUriFile
	case "urifolder":
		return TypeUriFolder
	case "mltable":
		return TypeMLTable
	case "literal":
		return TypeLiteral
	}
	return t
}

// ISODuration formats d as an ISO-8601 duration (PT1H2M3.5S), the form of
// retrySettings.timeout.
func ISODuration(d time.Duration) string {
	if d <= 0 {
		return "PT0S"
	}
	var b strings.Builder
	b.WriteString("PT")
	if h := d / time.Hour; h > 0 {
		b.WriteString(strconv.FormatInt(int64(h), 10) + "H")
		d -= h * time.Hour
	}
	if m := d / time.Minute; m > 0 {
		b.WriteString(strconv.FormatInt(int64(m), 10) + "M")
		d -= m * time.Minute
	}
	if d > 0 {
		b.WriteString(strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "S")
	}
	return b.String()
}

// ParseISODuration parses the subset of ISO-8601 durations the service uses
// (PnDTnHnMnS, fractional seconds allowed).
func ParseISODuration(s string) (time.Duration, error) {
	orig := s
	if !strings.HasPrefix(s, "P") {
		return 0, fmt.Errorf("duration %q does not start with P", orig)
	}
	s = s[1:]
	var total float64
	inTime, parts := false, 0
	for s != "" {
		if s[0] == 'T' {
			inTime = true
			s = s[1:]
			continue
		}
		i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
		if i <= 0 {
			return 0, fmt.Errorf("duration %q is not ISO-8601", orig)
		}
		n, err := strconv.ParseFloat(s[:i], 64)
		if err != nil {
			return 0, fmt.Errorf("duration %q is not ISO-8601", orig)
		}
		unit := s[i]
		s = s[i+1:]
		parts++
		switch {
		case unit == 'D' && !inTime:
			total += n * 24 * 3600
		case unit == 'H' && inTime:
			total += n * 3600
		case unit == 'M' && inTime:
			total += n * 60
		case unit == 'S' && inTime:
			total += n
		default:
			return 0, fmt.Errorf("duration %q has unsupported unit %q", orig, unit)
		}
	}
	if parts == 0 {
		return 0, fmt.Errorf("duration %q has no value", orig)
	}
	if total*float64(time.Second) > math.MaxInt64 {
		return 0, fmt.Errorf("duration %q is too long", orig)
	}
	return time.Duration(total * float64(time.Second)), nil
}

// wireJob is the job resource in both shapes the client reads: the batch
// endpoint's BatchJobResource (interactionEndpoints, inputData) and the ARM
// job (services, inputs). encoding/json matches keys case-insensitively.
type wireJob struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Properties struct {
		Status               string                     `json:"status"`
		InteractionEndpoints map[string]wireServiceLink `json:"interactionEndpoints"`
		Services             map[string]wireServiceLink `json:"services"`
		Error                json.RawMessage            `json:"error"`
		Inputs               map[string]wireJobInput    `json:"inputs"`
		InputData            map[string]wireJobInput    `json:"inputData"`
		Outputs              map[string]wireJobInput    `json:"outputs"`
		OutputData           map[string]wireJobInput    `json:"outputData"`
		Properties           map[string]string          `json:"properties"`
		CreationContext      struct {
			CreatedAt string `json:"createdAt"`
		} `json:"creationContext"`
	} `json:"properties"`
	SystemData struct {
		CreatedAt string `json:"createdAt"`
	} `json:"systemData"`
	Error json.RawMessage `json:"error"`
}

type wireServiceLink struct {
	Endpoint string `json:"endpoint"`
}

type wireJobInput struct {
	URI   string `json:"uri"`
	Value string `json:"value"`
}

type wireErrorBody struct {
	Error json.RawMessage `json:"error"`
	// Some gateways answer {"code":..,"message":..} or {"message":..}.
	Code    string `json:"code"`
	Message string `json:"message"`
}

type wireErrorObj struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// parseJob turns a 2xx body into a Job. It fails only when the body is not a
// JSON object; missing fields stay empty.
func parseJob(body []byte) (*Job, error) {
	var w wireJob
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("job resource is not JSON: %w", err)
	}
	j := &Job{Name: w.Name, ID: w.ID, Status: ParseStatus(w.Properties.Status)}
	if j.Name == "" && w.ID != "" {
		j.Name = w.ID[strings.LastIndex(w.ID, "/")+1:]
	}
	j.StudioURL = studioLink(w.Properties.InteractionEndpoints)
	if j.StudioURL == "" {
		j.StudioURL = studioLink(w.Properties.Services)
	}
	if j.Status == StatusFailed || j.Status == StatusCanceled {
		j.Error = errorMessage(w.Error)
		if j.Error == "" {
			j.Error = errorMessage(w.Properties.Error)
		}
	}
	for _, ts := range []string{w.SystemData.CreatedAt, w.Properties.CreationContext.CreatedAt} {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			j.CreatedAt = t.UTC()
			break
		}
	}
	j.Inputs = ioURIs(w.Properties.Inputs, w.Properties.InputData)
	j.Outputs = ioURIs(w.Properties.Outputs, w.Properties.OutputData)
	j.EndpointName = w.Properties.Properties["azureml.endpointname"]
	j.DeploymentName = w.Properties.Properties["azureml.deploymentname"]
	return j, nil
}

// ioURIs reads inputs or outputs (ARM's inputs, else the data plane's
// inputData) as name → URI (or a literal's value).
func ioURIs(arm, dataPlane map[string]wireJobInput) map[string]string {
	ios := arm
	if len(ios) == 0 {
		ios = dataPlane
	}
	if len(ios) == 0 {
		return nil
	}
	out := make(map[string]string, len(ios))
	for name, io := range ios {
		v := io.URI
		if v == "" {
			v = io.Value
		}
		out[name] = v
	}
	return out
}

func studioLink(m map[string]wireServiceLink) string {
	for k, v := range m {
		if strings.EqualFold(k, "studio") && v.Endpoint != "" {
			return v.Endpoint
		}
	}
	return ""
}

// errorMessage reads an error that is a string or an {code, message} object.
func errorMessage(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return redact(s)
	}
	var o wireErrorObj
	if json.Unmarshal(raw, &o) == nil {
		switch {
		case o.Message != "":
			return redact(o.Message)
		case o.Code != "":
			return redact(o.Code)
		}
	}
	return ""
}

// parseErrorBody reads code and message from an error answer: the ARM shape
// {"error":{"code","message"}}, a flat {"code","message"}, or plain text.
func parseErrorBody(body []byte) (code, msg string) {
	var w wireErrorBody
	if json.Unmarshal(body, &w) == nil {
		var o wireErrorObj
		if json.Unmarshal(w.Error, &o) == nil && (o.Code != "" || o.Message != "") {
			return oneLine(o.Code, 100), oneLine(o.Message, 500)
		}
		var s string
		if json.Unmarshal(w.Error, &s) == nil && s != "" {
			return "", oneLine(s, 500)
		}
		if w.Code != "" || w.Message != "" {
			return oneLine(w.Code, 100), oneLine(w.Message, 500)
		}
		return "", ""
	}
	return "", oneLine(string(body), 200)
}
