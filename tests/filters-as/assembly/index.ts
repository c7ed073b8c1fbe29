// A proxy-wasm HTTP filter on the published AssemblyScript SDK (@solo-io/proxy-runtime), as an
// Envoy user would write it. Its root configuration is a path prefix (default "/as"):
//   <prefix>/deny   a local reply 403 with a body and no content-type
//   <prefix>/empty  a local reply 401 with an empty body, content-type and content-length given
//   anything else   request header x-as-filter: seen, response header x-as-response: yes
export * from "@solo-io/proxy-runtime/proxy"; // the exports the host calls (and malloc)
import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  GrpcStatusValues,
  HeaderPair,
  Headers,
  send_local_response,
  stream_context,
} from "@solo-io/proxy-runtime";

class AsFilterRoot extends RootContext {
  prefix: string = "/as";

  onConfigure(configuration_size: u32): bool {
    // The SDK reads the plugin configuration buffer; with none configured there is nothing to read.
    if (configuration_size == 0) {
      return true;
    }
    super.onConfigure(configuration_size);
    const configured = this.getConfiguration();
    if (configured.length > 0) {
      this.prefix = configured;
    }
    return true;
  }

  createContext(context_id: u32): Context {
    return new AsFilter(context_id, this);
  }
}

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

class AsFilter extends Context {
  prefix: string;

  constructor(context_id: u32, root_context: AsFilterRoot) {
    super(context_id, root_context);
    this.prefix = root_context.prefix;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let path = stream_context.headers.request.get(":path");
    const query = path.indexOf("?");
    if (query >= 0) {
      path = path.substring(0, query);
    }
    if (path == this.prefix + "/deny") {
      send_local_response(
        403,
        "denied_by_assemblyscript",
        String.UTF8.encode("denied by assemblyscript"),
        [],
        GrpcStatusValues.InvalidCode,
      );
      return FilterHeadersStatusValues.StopIteration;
    }
    if (path == this.prefix + "/empty") {
      const headers: Headers = [pair("content-type", "text/html"), pair("content-length", "99")];
      send_local_response(401, "empty_by_assemblyscript", new ArrayBuffer(0), headers, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    stream_context.headers.request.add("x-as-filter", "seen");
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-response", "yes");
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => {
  return new AsFilterRoot(context_id);
}, "as_filter");
