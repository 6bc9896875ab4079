/*
 * Embedded in the payload's java/javaagent.jar (as extensions/lumigo-extension.jar) by
 * scripts/payload.sh. It configures the upstream OpenTelemetry Java agent from the LUMIGO_*
 * variables the operator sets on an instrumented container, the way the Node.js and Python
 * distros read them. Compiled with --release 8: it runs on every JVM the agent supports.
 */
package io.lumigo.javaagent;

import io.opentelemetry.sdk.autoconfigure.spi.AutoConfigurationCustomizer;
import io.opentelemetry.sdk.autoconfigure.spi.AutoConfigurationCustomizerProvider;
import io.opentelemetry.sdk.autoconfigure.spi.ConfigProperties;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.function.Function;
import java.util.logging.Logger;
import java.util.regex.Pattern;

/**
 * Adds defaults, never overrides: each value is added only when the configuration assembled so
 * far (system properties, OTEL_* environment variables, the agent's configuration file) holds
 * neither the key nor a setting that would be shadowed by it. A properties customizer sees that
 * whole configuration; a properties supplier would see neither the configuration file nor that
 * a user's generic OTEL_EXPORTER_OTLP_ENDPOINT must not be beaten by a signal-specific default.
 */
public final class LumigoConfiguration implements AutoConfigurationCustomizerProvider {

  static final Pattern TOKEN = Pattern.compile("t_[0-9a-f]{21}");
  static final String[] LUMIGO_VARIABLES = {
    "LUMIGO_ENDPOINT", "LUMIGO_LOGS_ENDPOINT", "LUMIGO_TRACER_TOKEN", "LUMIGO_ENABLE_TRACES",
    "LUMIGO_ENABLE_LOGS", "LUMIGO_CONTAINER_NAME"
  };

  @Override
  public void customize(AutoConfigurationCustomizer customizer) {
    customizer.addPropertiesCustomizer(
        new Function<ConfigProperties, Map<String, String>>() {
          @Override
          public Map<String, String> apply(ConfigProperties config) {
            try {
              return defaults(System.getenv(), config);
            } catch (RuntimeException e) {
              // A malformed user setting, say: the agent goes on as configured.
              Logger.getLogger(LumigoConfiguration.class.getName())
                  .warning("LUMIGO_* configuration not applied: " + e.getClass().getName());
              return new HashMap<String, String>();
            }
          }
        });
  }

  /** The properties to add, given the environment and the configuration so far. */
  static Map<String, String> defaults(Map<String, String> env, ConfigProperties config) {
    Map<String, String> out = new HashMap<String, String>();
    boolean lumigo = false;
    for (String name : LUMIGO_VARIABLES) {
      lumigo |= present(env.get(name));
    }
    if (!lumigo) {
      // Not a Lumigo-instrumented container: the agent behaves as upstream.
      return out;
    }
    String token = env.get("LUMIGO_TRACER_TOKEN");
    if (present(token) && !TOKEN.matcher(token.trim()).matches()) {
      // The value itself is a secret: never printed.
      Logger.getLogger(LumigoConfiguration.class.getName())
          .warning("LUMIGO_TRACER_TOKEN is not a well-formed Lumigo token; exporting without it");
      token = null;
    }
    token = present(token) ? token.trim() : null;

    boolean traces = !"false".equals(lower(env.get("LUMIGO_ENABLE_TRACES")));
    signal(out, config, "traces", traces, env.get("LUMIGO_ENDPOINT"), token);
    boolean logs = "true".equals(lower(env.get("LUMIGO_ENABLE_LOGS")));
    signal(out, config, "logs", logs, env.get("LUMIGO_LOGS_ENDPOINT"), token);
    // Lumigo takes no OTLP metrics.
    putAbsent(out, config, "otel.metrics.exporter", "none");

    String container = env.get("LUMIGO_CONTAINER_NAME");
    Map<String, String> resource = config.getMap("otel.resource.attributes");
    if (present(container)
        && !configured(config, "otel.service.name")
        && !resource.containsKey("service.name")) {
      out.put("otel.service.name", container.trim());
    }
    // The telemetry proxy counts spans per container (the operator's tracing status), as the
    // Node.js and Python distros name it from the same variable.
    if (present(container) && !resource.containsKey("k8s.container.name")) {
      StringBuilder attributes = new StringBuilder();
      for (Map.Entry<String, String> entry : resource.entrySet()) {
        attributes.append(entry.getKey()).append('=').append(entry.getValue()).append(',');
      }
      attributes.append("k8s.container.name=").append(container.trim());
      out.put("otel.resource.attributes", attributes.toString());
    }
    return out;
  }

  /**
   * One signal: off, or sent to Lumigo's endpoint over OTLP/HTTP with the token. The endpoint is
   * taken only when the user chose no endpoint for that signal (generic or specific), and the
   * token only goes with Lumigo's own endpoint, never to one the user chose.
   */
  private static void signal(
      Map<String, String> out,
      ConfigProperties config,
      String signal,
      boolean enabled,
      String endpoint,
      String token) {
    String prefix = "otel.exporter.otlp." + signal + ".";
    if (!enabled) {
      putAbsent(out, config, "otel." + signal + ".exporter", "none");
      return;
    }
    if (!present(endpoint)
        || !(endpoint.startsWith("http://") || endpoint.startsWith("https://"))
        || configured(config, "otel.exporter.otlp.endpoint")
        || configured(config, prefix + "endpoint")) {
      return;
    }
    out.put(prefix + "endpoint", endpoint.trim());
    putAbsent(out, config, prefix + "protocol", "http/protobuf");
    if (token == null || configured(config, prefix + "headers")) {
      return;
    }
    // A signal's headers replace the generic ones, so the user's generic headers are kept in it.
    String generic = config.getString("otel.exporter.otlp.headers");
    if (!present(generic)) {
      out.put(prefix + "headers", "Authorization=LumigoToken " + token);
    } else if (!hasAuthorization(generic)) {
      out.put(prefix + "headers", generic.trim() + ",Authorization=LumigoToken " + token);
    }
  }

  private static boolean hasAuthorization(String headers) {
    for (String item : headers.split(",")) {
      int eq = item.indexOf('=');
      if (eq > 0 && item.substring(0, eq).trim().equalsIgnoreCase("authorization")) {
        return true;
      }
    }
    return false;
  }

  private static void putAbsent(
      Map<String, String> out, ConfigProperties config, String key, String value) {
    if (!configured(config, key)) {
      out.put(key, value);
    }
  }

  private static boolean configured(ConfigProperties config, String key) {
    return present(config.getString(key));
  }

  private static boolean present(String value) {
    return value != null && !value.trim().isEmpty();
  }

  private static String lower(String value) {
    return value == null ? null : value.trim().toLowerCase(Locale.ROOT);
  }

  @Override
  public int order() {
    // After any other extension's customizers, so that what they set also counts as set.
    return 1000;
  }
}
