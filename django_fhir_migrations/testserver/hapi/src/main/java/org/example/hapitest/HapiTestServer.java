package org.example.hapitest;

import ca.uhn.fhir.rest.server.RestfulServer;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.HttpConfiguration;
import org.eclipse.jetty.server.HttpConnectionFactory;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

/**
 * Entry point: builds the Spring context of a HAPI FHIR JPA server (R4, H2) and
 * serves its RestfulServer under /fhir on an embedded Jetty bound to 127.0.0.1.
 */
public final class HapiTestServer {

	private static final Logger ourLog = LoggerFactory.getLogger(HapiTestServer.class);

	/** Printed (to stdout and the log) once /fhir answers; launchers may wait for it. */
	public static final String READY_MARKER = "HAPI_TEST_SERVER_READY";

	private HapiTestServer() {}

	public static void main(String[] theArgs) {
		try {
			run();
		} catch (Throwable t) {
			ourLog.error("HAPI test server failed to start", t);
			System.err.println("HAPI_TEST_SERVER_FAILED " + t);
			System.exit(1);
		}
	}

	private static void run() throws Exception {
		long start = System.nanoTime();
		String host = Settings.host();
		int port = Settings.port();
		checkPortFree(host, port);

		// Jetty first (not started), so the address strategy can see the real port.
		Server jetty = new Server();
		HttpConfiguration http = new HttpConfiguration();
		http.setSendServerVersion(false);
		http.setSendXPoweredBy(false);
		ServerConnector connector = new ServerConnector(jetty, new HttpConnectionFactory(http));
		connector.setHost(host);
		connector.setPort(port);
		jetty.addConnector(connector);
		ServerAddress.setConnector(connector);

		AnnotationConfigApplicationContext spring = new AnnotationConfigApplicationContext();
		spring.register(ServerConfig.class);
		spring.registerShutdownHook();
		spring.refresh();

		RestfulServer fhirServlet = spring.getBean(RestfulServer.class);
		ServletContextHandler context = new ServletContextHandler();
		context.setContextPath("/");
		ServletHolder holder = new ServletHolder("fhir", fhirServlet);
		holder.setInitOrder(1);
		context.addServlet(holder, "/fhir/*");
		jetty.setHandler(context);
		jetty.setStopAtShutdown(true);
		jetty.start();

		String base = ServerAddress.baseUrl();
		warmUp(base);
		double secs = (System.nanoTime() - start) / 1e9;
		ourLog.info("{} {} (started in {} s)", READY_MARKER, base, String.format("%.1f", secs));
		System.out.println(READY_MARKER + " " + base);
		System.out.flush();
		jetty.join();
	}

	/** Fail in a second, not after the whole Spring start-up, when the port is taken. */
	private static void checkPortFree(String theHost, int thePort) throws IOException {
		if (thePort == 0) {
			return;
		}
		try (ServerSocket socket = new ServerSocket()) {
			socket.setReuseAddress(true);
			socket.bind(new InetSocketAddress(theHost, thePort));
		} catch (IOException e) {
			throw new IOException("Cannot listen on " + theHost + ":" + thePort + " (" + e.getMessage() + ")", e);
		}
	}

	/**
	 * The first /metadata call builds the CapabilityStatement (several seconds); do it
	 * here so that the ready marker means "answers quickly".
	 */
	private static void warmUp(String theBase) {
		try {
			HttpClient client = HttpClient.newHttpClient();
			HttpRequest request = HttpRequest.newBuilder(URI.create(theBase + "/metadata"))
					.header("Accept", "application/fhir+json")
					.timeout(Duration.ofMinutes(2))
					.build();
			HttpResponse<Void> response = client.send(request, HttpResponse.BodyHandlers.discarding());
			if (response.statusCode() != 200) {
				ourLog.warn("Warm-up GET /metadata answered {}", response.statusCode());
			}
		} catch (Exception e) {
			ourLog.warn("Warm-up GET /metadata failed: {}", e.toString());
		}
	}
}
