package org.example.hapitest;

import ca.uhn.fhir.rest.server.IServerAddressStrategy;
import jakarta.servlet.ServletContext;
import jakarta.servlet.http.HttpServletRequest;
import org.eclipse.jetty.server.ServerConnector;

/**
 * Reports the server's base URL as http://HOST:PORT/fhir with the port actually bound,
 * so Location headers and paging links never depend on the request's Host header.
 */
public final class ServerAddress implements IServerAddressStrategy {

	private static volatile ServerConnector ourConnector;

	static void setConnector(ServerConnector theConnector) {
		ourConnector = theConnector;
	}

	public static String baseUrl() {
		ServerConnector connector = ourConnector;
		int port = connector != null && connector.getLocalPort() > 0 ? connector.getLocalPort() : Settings.port();
		String host = connector != null && connector.getHost() != null ? connector.getHost() : Settings.host();
		if (host.contains(":") && !host.startsWith("[")) {
			host = "[" + host + "]";
		}
		return "http://" + host + ":" + port + "/fhir";
	}

	@Override
	public String determineServerBase(ServletContext theServletContext, HttpServletRequest theRequest) {
		return baseUrl();
	}
}
