// /docs: Swagger UI (vendored, pages/vendor/swagger-ui) over darkroom's own /openapi.json.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, tryItOutEnabled: false });
